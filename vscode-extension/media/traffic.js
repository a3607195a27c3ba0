// The mirrord Traffic webview: draws rows rendered (and escaped) by the extension, filters them
// by text and session, and shows a row's details on click.
(function () {
  const vscode = acquireVsCodeApi();
  const MAX_ROWS = 5000;
  const tbody = document.getElementById('rows');
  const filter = document.getElementById('filter');
  const session = document.getElementById('session');
  const count = document.getElementById('count');
  const empty = document.getElementById('empty');
  let rows = [];
  const saved = vscode.getState() || {};
  filter.value = saved.filter || '';
  let selectedSession = saved.session || '';

  function matches(row) {
    if (selectedSession && row.sessionId !== selectedSession) return false;
    const terms = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    return terms.every((t) => row.search.includes(t));
  }

  function updateCount() {
    const shown = tbody.querySelectorAll('tr.row').length;
    count.textContent = rows.length ? `${shown} of ${rows.length}` : '';
    empty.hidden = rows.length > 0;
  }

  function redraw() {
    tbody.innerHTML = rows.filter(matches).map((r) => r.html).join('');
    updateCount();
  }

  function setSessions(list) {
    const current = selectedSession;
    session.innerHTML = '';
    const all = document.createElement('option');
    all.value = '';
    all.textContent = 'All sessions';
    session.appendChild(all);
    for (const s of list) {
      const o = document.createElement('option');
      o.value = s.id;
      o.textContent = s.label;
      session.appendChild(o);
    }
    session.value = list.some((s) => s.id === current) ? current : '';
    selectedSession = session.value;
  }

  function save() {
    vscode.setState({ filter: filter.value, session: selectedSession });
  }

  window.addEventListener('message', (e) => {
    const msg = e.data;
    if (msg.type === 'reset') {
      rows = msg.rows;
      if (msg.sessions) setSessions(msg.sessions);
      redraw();
    } else if (msg.type === 'append') {
      const atBottom = document.scrollingElement.scrollTop + window.innerHeight >= document.scrollingElement.scrollHeight - 4;
      for (const r of msg.rows) {
        rows.push(r);
        if (matches(r)) tbody.insertAdjacentHTML('beforeend', r.html);
      }
      if (rows.length > MAX_ROWS) {
        rows = rows.slice(rows.length - MAX_ROWS);
        redraw();
      }
      updateCount();
      if (atBottom) window.scrollTo(0, document.scrollingElement.scrollHeight);
    } else if (msg.type === 'sessions') {
      setSessions(msg.sessions);
      redraw();
    }
  });

  filter.addEventListener('input', () => {
    save();
    redraw();
  });
  session.addEventListener('change', () => {
    selectedSession = session.value;
    save();
    redraw();
  });
  document.getElementById('clear').addEventListener('click', () => vscode.postMessage({ type: 'clear' }));

  function toggle(tr) {
    const details = tbody.querySelector(`tr.details[data-for="${tr.dataset.id}"]`);
    if (!details) return;
    details.hidden = !details.hidden;
    tr.classList.toggle('open', !details.hidden);
  }
  tbody.addEventListener('click', (e) => {
    const tr = e.target.closest('tr.row');
    if (tr) toggle(tr);
  });
  tbody.addEventListener('keydown', (e) => {
    const tr = e.target.closest('tr.row');
    if (tr && (e.key === 'Enter' || e.key === ' ')) {
      e.preventDefault();
      toggle(tr);
    }
  });

  vscode.postMessage({ type: 'ready' });
})();
