package io.mirrord.jetbrains.core.testing;

import io.mirrord.jetbrains.core.SessionsModel;
import io.mirrord.jetbrains.core.TrafficModel;
import java.time.Duration;
import java.util.List;
import java.util.function.Predicate;

/** Waits on the models' change signals (never a sleep), each bounded by a timeout. */
public final class Waits {
    private Waits() {}

    /** The first row matching {@code p}, waiting for it to arrive. */
    public static TrafficModel.Row row(TrafficModel model, Predicate<TrafficModel.Row> p, Duration timeout, String what)
            throws InterruptedException {
        Object signal = new Object();
        TrafficModel.Listener l = () -> {
            synchronized (signal) {
                signal.notifyAll();
            }
        };
        model.addListener(l);
        try {
            long deadline = System.nanoTime() + timeout.toNanos();
            synchronized (signal) {
                while (true) {
                    for (TrafficModel.Row r : model.rows()) {
                        if (p.test(r)) {
                            return r;
                        }
                    }
                    long left = deadline - System.nanoTime();
                    if (left <= 0) {
                        throw new AssertionError("no traffic row " + what + " within " + timeout + "; rows: " + summaries(model.rows()));
                    }
                    signal.wait(Math.max(1, left / 1_000_000));
                }
            }
        } finally {
            model.removeListener(l);
        }
    }

    /** The session entry once it matches {@code p}. */
    public static SessionsModel.Entry session(SessionsModel model, String id, Predicate<SessionsModel.Entry> p, Duration timeout)
            throws InterruptedException {
        Object signal = new Object();
        SessionsModel.Listener l = () -> {
            synchronized (signal) {
                signal.notifyAll();
            }
        };
        model.addListener(l);
        try {
            long deadline = System.nanoTime() + timeout.toNanos();
            synchronized (signal) {
                while (true) {
                    SessionsModel.Entry e = model.get(id);
                    if (e != null && p.test(e)) {
                        return e;
                    }
                    long left = deadline - System.nanoTime();
                    if (left <= 0) {
                        throw new AssertionError("session " + id + " did not reach the expected state within " + timeout + "; it is " + e);
                    }
                    signal.wait(Math.max(1, left / 1_000_000));
                }
            }
        } finally {
            model.removeListener(l);
        }
    }

    public static String summaries(List<TrafficModel.Row> rows) {
        StringBuilder sb = new StringBuilder();
        for (TrafficModel.Row r : rows) {
            sb.append("\n  ").append(r.type()).append(" | ").append(r.summary()).append(" | ").append(r.status())
                    .append(" | ").append(r.mode()).append(" | ").append(r.filter());
        }
        return sb.toString();
    }
}
