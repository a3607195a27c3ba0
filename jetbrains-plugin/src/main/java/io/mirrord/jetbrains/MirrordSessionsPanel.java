package io.mirrord.jetbrains;

import com.intellij.openapi.Disposable;
import com.intellij.openapi.application.ApplicationManager;
import com.intellij.openapi.project.Project;
import com.intellij.ui.components.JBScrollPane;
import com.intellij.ui.table.JBTable;
import io.mirrord.jetbrains.core.MirrordException;
import io.mirrord.jetbrains.core.MirrordService;
import io.mirrord.jetbrains.core.SessionsModel;
import java.awt.BorderLayout;
import java.awt.FlowLayout;
import java.util.List;
import java.util.stream.Collectors;
import javax.swing.JButton;
import javax.swing.JPanel;
import javax.swing.table.AbstractTableModel;

/**
 * The sessions ({@link SessionsModel}): live and ended, with stop, refresh, clear-ended and
 * restart-daemon buttons that call the {@link MirrordService}.
 */
public final class MirrordSessionsPanel extends JPanel implements Disposable {
    private static final List<String> COLUMNS = List.of("Session", "Target", "State", "Ports", "Processes", "Agent", "Message");

    private final SessionsModel model;
    private final EntriesTableModel entries = new EntriesTableModel();
    private final JBTable table = new JBTable(entries);
    private final SessionsModel.Listener listener = () -> ApplicationManager.getApplication().invokeLater(this::redraw);

    public MirrordSessionsPanel(Project project, MirrordService core) {
        super(new BorderLayout());
        this.model = core.sessions();
        JPanel buttons = new JPanel(new FlowLayout(FlowLayout.LEFT));
        JButton stop = new JButton("Stop Session");
        stop.addActionListener(e -> {
            int i = table.getSelectedRow();
            if (i >= 0) {
                String id = entries.entry(table.convertRowIndexToModel(i)).sessionId();
                background(project, () -> core.stopSession(id));
            }
        });
        JButton refresh = new JButton("Refresh");
        refresh.addActionListener(e -> ApplicationManager.getApplication().executeOnPooledThread(core::refreshSessions));
        JButton clear = new JButton("Clear Ended");
        clear.addActionListener(e -> model.clearEnded());
        JButton restart = new JButton("Restart mirrord-server");
        restart.addActionListener(e -> background(project, core::restartDaemon));
        buttons.add(stop);
        buttons.add(refresh);
        buttons.add(clear);
        buttons.add(restart);
        add(buttons, BorderLayout.NORTH);
        add(new JBScrollPane(table), BorderLayout.CENTER);
        model.addListener(listener);
        redraw();
    }

    private interface Call {
        void run() throws MirrordException;
    }

    private static void background(Project project, Call call) {
        ApplicationManager.getApplication().executeOnPooledThread(() -> {
            try {
                call.run();
            } catch (MirrordException e) {
                MirrordNotifier.notify(project, MirrordService.Level.ERROR, "mirrord: " + e.getMessage());
            }
        });
    }

    private void redraw() {
        entries.show(model.all());
    }

    @Override
    public void dispose() {
        model.removeListener(listener);
    }

    private static final class EntriesTableModel extends AbstractTableModel {
        private List<SessionsModel.Entry> shown = List.of();

        void show(List<SessionsModel.Entry> e) {
            shown = e;
            fireTableDataChanged();
        }

        SessionsModel.Entry entry(int i) {
            return shown.get(i);
        }

        @Override
        public int getRowCount() {
            return shown.size();
        }

        @Override
        public int getColumnCount() {
            return COLUMNS.size();
        }

        @Override
        public String getColumnName(int column) {
            return COLUMNS.get(column);
        }

        @Override
        public Object getValueAt(int row, int column) {
            SessionsModel.Entry e = shown.get(row);
            return switch (column) {
                case 0 -> e.sessionId();
                case 1 -> e.target();
                case 2 -> e.replacedBy() == null ? e.state() : e.state() + " → " + e.replacedBy();
                case 3 -> e.ports().stream().map(String::valueOf).collect(Collectors.joining(", "));
                case 4 -> e.processes().stream().map(p -> p.executable() + " (" + p.pid() + ")").collect(Collectors.joining(", "));
                case 5 -> e.agentPid() == null ? "" : String.valueOf(e.agentPid());
                default -> e.message() == null ? "" : e.message();
            };
        }
    }
}
