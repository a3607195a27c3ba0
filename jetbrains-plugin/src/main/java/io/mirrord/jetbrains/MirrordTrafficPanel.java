package io.mirrord.jetbrains;

import com.intellij.openapi.Disposable;
import com.intellij.openapi.application.ApplicationManager;
import com.intellij.openapi.ui.ComboBox;
import com.intellij.ui.JBSplitter;
import com.intellij.ui.SearchTextField;
import com.intellij.ui.components.JBScrollPane;
import com.intellij.ui.table.JBTable;
import io.mirrord.jetbrains.core.TrafficModel;
import java.awt.BorderLayout;
import java.awt.FlowLayout;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import javax.swing.JButton;
import javax.swing.JLabel;
import javax.swing.JPanel;
import javax.swing.event.DocumentEvent;
import javax.swing.table.AbstractTableModel;
import org.jetbrains.annotations.NotNull;

/**
 * The live traffic table: the rows {@link TrafficModel} keeps, through the {@link
 * TrafficModel.Filter} the controls make (text, method, status, mode), and the selected row's
 * details ({@link TrafficModel.Row#details()}).
 */
public final class MirrordTrafficPanel extends JPanel implements Disposable {
    private static final String ANY = "any";

    private final TrafficModel model;
    private final SearchTextField text = new SearchTextField(false);
    private final ComboBox<String> method = new ComboBox<>(new String[] {ANY, "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"});
    private final ComboBox<TrafficModel.StatusClass> status = new ComboBox<>(TrafficModel.StatusClass.values());
    private final ComboBox<String> mode = new ComboBox<>(new String[] {ANY, "mirror", "steal"});
    private final RowsTableModel rows = new RowsTableModel();
    private final RowsTableModel.Details details = new RowsTableModel.Details();
    private final JBTable table = new JBTable(rows);
    /** Coalesces bursts of traffic into one redraw on the UI thread. */
    private final AtomicBoolean redrawQueued = new AtomicBoolean();
    private final TrafficModel.Listener listener = this::redrawSoon;

    public MirrordTrafficPanel(TrafficModel model) {
        super(new BorderLayout());
        this.model = model;
        JPanel controls = new JPanel(new FlowLayout(FlowLayout.LEFT));
        controls.add(text);
        controls.add(new JLabel("Method:"));
        controls.add(method);
        controls.add(new JLabel("Status:"));
        controls.add(status);
        controls.add(new JLabel("Mode:"));
        controls.add(mode);
        JButton clear = new JButton("Clear");
        clear.addActionListener(e -> model.clear());
        controls.add(clear);
        add(controls, BorderLayout.NORTH);
        JBSplitter split = new JBSplitter(false, 0.7f);
        split.setFirstComponent(new JBScrollPane(table));
        split.setSecondComponent(new JBScrollPane(new JBTable(details)));
        add(split, BorderLayout.CENTER);
        text.addDocumentListener(new com.intellij.ui.DocumentAdapter() {
            @Override
            protected void textChanged(@NotNull DocumentEvent e) {
                redraw();
            }
        });
        method.addActionListener(e -> redraw());
        status.addActionListener(e -> redraw());
        mode.addActionListener(e -> redraw());
        table.getSelectionModel().addListSelectionListener(e -> {
            int i = table.getSelectedRow();
            details.show(i < 0 ? List.of() : rows.row(table.convertRowIndexToModel(i)).details());
        });
        model.addListener(listener);
        redraw();
    }

    private TrafficModel.Filter filter() {
        String m = (String) method.getSelectedItem();
        String md = (String) mode.getSelectedItem();
        return new TrafficModel.Filter(text.getText(), ANY.equals(m) ? null : m,
                (TrafficModel.StatusClass) status.getSelectedItem(), ANY.equals(md) ? null : md, null);
    }

    private void redrawSoon() {
        if (redrawQueued.compareAndSet(false, true)) {
            ApplicationManager.getApplication().invokeLater(() -> {
                redrawQueued.set(false);
                redraw();
            });
        }
    }

    private void redraw() {
        rows.show(model.rows(filter()));
    }

    @Override
    public void dispose() {
        model.removeListener(listener);
    }

    /** The table over a snapshot of filtered rows; columns are {@link TrafficModel#COLUMNS}. */
    private static final class RowsTableModel extends AbstractTableModel {
        private List<TrafficModel.Row> shown = List.of();

        void show(List<TrafficModel.Row> rows) {
            shown = rows;
            fireTableDataChanged();
        }

        TrafficModel.Row row(int i) {
            return shown.get(i);
        }

        @Override
        public int getRowCount() {
            return shown.size();
        }

        @Override
        public int getColumnCount() {
            return TrafficModel.COLUMNS.size();
        }

        @Override
        public String getColumnName(int column) {
            return TrafficModel.COLUMNS.get(column);
        }

        @Override
        public Object getValueAt(int row, int column) {
            return shown.get(row).column(column);
        }

        /** Name/value pairs of the selected row. */
        static final class Details extends AbstractTableModel {
            private List<Map.Entry<String, String>> pairs = List.of();

            void show(List<Map.Entry<String, String>> p) {
                pairs = p;
                fireTableDataChanged();
            }

            @Override
            public int getRowCount() {
                return pairs.size();
            }

            @Override
            public int getColumnCount() {
                return 2;
            }

            @Override
            public String getColumnName(int column) {
                return column == 0 ? "Name" : "Value";
            }

            @Override
            public Object getValueAt(int row, int column) {
                return column == 0 ? pairs.get(row).getKey() : pairs.get(row).getValue();
            }
        }
    }
}
