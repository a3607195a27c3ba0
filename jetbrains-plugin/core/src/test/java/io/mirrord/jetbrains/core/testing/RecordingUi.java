package io.mirrord.jetbrains.core.testing;

import io.mirrord.jetbrains.core.MirrordService;
import io.mirrord.jetbrains.core.Targets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Function;
import java.util.function.Predicate;

/**
 * A {@link MirrordService.Ui} for tests: records every balloon, progress step and picker call,
 * and answers the picker with {@code chooser}.
 */
public final class RecordingUi implements MirrordService.Ui {
    public record Note(MirrordService.Level level, String message) {}

    private final List<Note> notes = new ArrayList<>();
    private final List<List<Targets.Item>> pickerCalls = new ArrayList<>();
    private final List<String> progress = new ArrayList<>();
    private volatile Function<List<Targets.Item>, String> chooser;

    public RecordingUi(Function<List<Targets.Item>, String> chooser) {
        this.chooser = chooser;
    }

    public void setChooser(Function<List<Targets.Item>, String> chooser) {
        this.chooser = chooser;
    }

    @Override
    public synchronized void notify(MirrordService.Level level, String message) {
        notes.add(new Note(level, message));
        notifyAll();
    }

    @Override
    public String chooseTarget(List<Targets.Item> items) {
        synchronized (this) {
            pickerCalls.add(List.copyOf(items));
        }
        return chooser.apply(items);
    }

    @Override
    public synchronized void begin(String token, String title) {
        progress.add("begin " + token + " " + title);
        notifyAll();
    }

    @Override
    public synchronized void report(String token, String message) {
        progress.add("report " + token + " " + message);
        notifyAll();
    }

    @Override
    public synchronized void end(String token, String message) {
        progress.add("end " + token + " " + message);
        notifyAll();
    }

    public synchronized List<Note> notes() {
        return List.copyOf(notes);
    }

    public synchronized List<List<Targets.Item>> pickerCalls() {
        return List.copyOf(pickerCalls);
    }

    public synchronized List<String> progress() {
        return List.copyOf(progress);
    }

    /** Waits until a balloon matches; fails after {@code timeout}. */
    public synchronized Note waitNote(Predicate<Note> p, Duration timeout) throws InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            for (Note n : notes) {
                if (p.test(n)) {
                    return n;
                }
            }
            long left = deadline - System.nanoTime();
            if (left <= 0) {
                throw new AssertionError("no matching notification within " + timeout + "; got " + notes);
            }
            wait(Math.max(1, left / 1_000_000));
        }
    }

    /** Waits until a progress step matches; fails after {@code timeout}. */
    public synchronized String waitProgress(Predicate<String> p, Duration timeout) throws InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            for (String s : progress) {
                if (p.test(s)) {
                    return s;
                }
            }
            long left = deadline - System.nanoTime();
            if (left <= 0) {
                throw new AssertionError("no matching progress within " + timeout + "; got " + progress);
            }
            wait(Math.max(1, left / 1_000_000));
        }
    }
}
