package io.mirrord.jetbrains;

import com.intellij.openapi.application.ApplicationManager;
import com.intellij.openapi.application.ModalityState;
import com.intellij.openapi.project.Project;
import com.intellij.openapi.ui.popup.JBPopup;
import com.intellij.openapi.ui.popup.JBPopupFactory;
import com.intellij.openapi.ui.popup.JBPopupListener;
import com.intellij.openapi.ui.popup.LightweightWindowEvent;
import io.mirrord.jetbrains.core.Targets;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import org.jetbrains.annotations.NotNull;

/**
 * The target picker: a popup list of {@link Targets.Item}s in the order {@link Targets#order}
 * gives (recent first), labelled by {@link Targets.Item#label()}. Called from a background
 * thread (the launch flow); it shows the popup on the UI thread and waits for the choice.
 */
public final class MirrordTargetPicker {
    private MirrordTargetPicker() {}

    /** The chosen target, or {@code null} if the user closed the popup. */
    public static String choose(Project project, List<Targets.Item> items) {
        CompletableFuture<String> chosen = new CompletableFuture<>();
        ApplicationManager.getApplication().invokeLater(() -> {
            JBPopup popup = JBPopupFactory.getInstance()
                    .createPopupChooserBuilder(items)
                    .setTitle("mirrord: Choose the Target")
                    .setRenderer(new com.intellij.ui.SimpleListCellRenderer<Targets.Item>() {
                        @Override
                        public void customize(@NotNull javax.swing.JList<? extends Targets.Item> list, Targets.Item item,
                                              int index, boolean selected, boolean focused) {
                            setText(item.label());
                            setEnabled(item.available());
                        }
                    })
                    .setNamerForFiltering(Targets.Item::target)
                    .setItemChosenCallback(item -> chosen.complete(item.target()))
                    .addListener(new JBPopupListener() {
                        @Override
                        public void onClosed(@NotNull LightweightWindowEvent event) {
                            // Invariant: completes with null only if no item was chosen first.
                            chosen.complete(null);
                        }
                    })
                    .createPopup();
            popup.showCenteredInCurrentWindow(project);
        }, ModalityState.any());
        try {
            return chosen.get();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return null;
        } catch (ExecutionException e) {
            return null;
        }
    }
}
