// The traffic panel's rows, without VS Code: TrafficEvent → row data → HTML, the filter, and a
// bounded store of rows per session.

import type { TrafficEvent } from './api';

export type RowKind = 'incoming' | 'outgoing' | 'dns' | 'port' | 'process' | 'error' | 'other';

export interface Row {
  id: number;
  sessionId: string;
  kind: RowKind;
  time: number;
  /** HH:MM:SS.mmm (local time) */
  timeText: string;
  /** Short type label: "HTTP in", "TCP out", "DNS", ... */
  type: string;
  /** The main column: "GET /path", "payment-service:8080", "name → answers"... */
  summary: string;
  /** Status column: HTTP status, "ok", the error... */
  status: string;
  /** "mirror" | "steal" | "" */
  mode: string;
  /** The HTTP filter that took the request, if any. */
  filter: string;
  /** "12 ms" or "" */
  duration: string;
  /** true for failures (HTTP 5xx/0, connection and DNS errors, error events) */
  failed: boolean;
  /** Name/value pairs shown when the row is clicked (headers of a request, else the fields). */
  details: Array<[string, string]>;
  /** Lower-cased text the filter box searches. */
  search: string;
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

export function formatTime(ms: number): string {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function ms(n: number | undefined): string {
  return typeof n === 'number' ? `${n} ms` : '';
}

function fields(event: Record<string, unknown>): Array<[string, string]> {
  return Object.entries(event)
    .filter(([k]) => k !== 'type')
    .map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]);
}

/** A row for one event of one session. */
export function eventToRow(sessionId: string, event: TrafficEvent, id: number): Row {
  const base = {
    id,
    sessionId,
    time: event.time,
    timeText: formatTime(event.time),
    mode: '',
    filter: '',
    duration: '',
    status: '',
    failed: false,
  };
  let row: Omit<Row, 'search'>;
  switch (event.type) {
    case 'incoming_request': {
      const status = event.status === 0 ? 'failed' : String(event.status);
      row = {
        ...base,
        kind: 'incoming',
        type: 'HTTP in',
        summary: `${event.method} ${event.path}`,
        status,
        mode: event.mode,
        filter: event.matched_filter ?? '',
        duration: ms(event.duration_ms),
        failed: event.status === 0 || event.status >= 500,
        details: [
          ['port', String(event.port)],
          ...Object.entries(event.headers ?? {}).sort(([a], [b]) => a.localeCompare(b)),
        ],
      };
      break;
    }
    case 'incoming_connection':
      row = {
        ...base,
        kind: 'incoming',
        type: 'TCP in',
        summary: `${event.peer} → :${event.port}`,
        mode: event.mode,
        details: fields(event),
      };
      break;
    case 'outgoing_connection': {
      const dest = event.host ? `${event.host}:${event.port}` : `${event.address}:${event.port}`;
      row = {
        ...base,
        kind: 'outgoing',
        type: `${(event.protocol || 'tcp').toUpperCase()} out`,
        summary: event.host ? `${dest} (${event.address})` : dest,
        status: event.error ? event.error : 'ok',
        failed: !!event.error,
        details: fields(event),
      };
      break;
    }
    case 'dns_query':
      row = {
        ...base,
        kind: 'dns',
        type: 'DNS',
        summary: event.answers?.length ? `${event.name} → ${event.answers.join(', ')}` : event.name,
        status: event.error ? event.error : `${event.answers?.length ?? 0} answer${event.answers?.length === 1 ? '' : 's'}`,
        duration: ms(event.duration_ms),
        failed: !!event.error,
        details: fields(event),
      };
      break;
    case 'port_subscription':
      row = {
        ...base,
        kind: 'port',
        type: 'Port',
        summary: `:${event.port} ${event.active ? 'subscribed' : 'released'}`,
        mode: event.mode,
        details: fields(event),
      };
      break;
    case 'process_connected':
    case 'process_disconnected':
      row = {
        ...base,
        kind: 'process',
        type: 'Process',
        summary: `${event.executable} (pid ${event.pid}) ${event.type === 'process_connected' ? 'joined' : 'left'}`,
        details: fields(event),
      };
      break;
    case 'error':
      row = { ...base, kind: 'error', type: 'Error', summary: event.message, failed: true, details: fields(event) };
      break;
    default: {
      const other = event as unknown as Record<string, unknown>;
      row = {
        ...base,
        time: typeof other.time === 'number' ? other.time : Date.now(),
        timeText: formatTime(typeof other.time === 'number' ? other.time : Date.now()),
        kind: 'other',
        type: String(other.type ?? 'event'),
        summary: JSON.stringify(fields(other)),
        details: fields(other),
      };
    }
  }
  const search = [row.type, row.summary, row.status, row.mode, row.filter, row.sessionId, ...row.details.flat()]
    .join(' ')
    .toLowerCase();
  return { ...row, search };
}

export function escapeHtml(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

/** Columns of the table, in order (the header the webview shows). */
export const COLUMNS = ['Time', 'Session', 'Type', 'Request / connection', 'Status', 'Mode', 'Filter', 'Duration'];

/** The short session id shown in the table. */
export function shortSession(id: string): string {
  return id.length > 8 ? id.slice(0, 8) : id;
}

/**
 * The row as HTML: a `tr.row` with the columns, followed by a hidden `tr.details` with the
 * headers (or fields) that a click on the row shows. Every value is escaped.
 */
export function rowHtml(row: Row): string {
  const e = escapeHtml;
  const cls = ['row', `kind-${row.kind}`, row.failed ? 'failed' : ''].filter(Boolean).join(' ');
  const cells = [
    `<td class="time">${e(row.timeText)}</td>`,
    `<td class="session" title="${e(row.sessionId)}">${e(shortSession(row.sessionId))}</td>`,
    `<td class="type">${e(row.type)}</td>`,
    `<td class="summary" title="${e(row.summary)}">${e(row.summary)}</td>`,
    `<td class="status">${e(row.status)}</td>`,
    `<td class="mode">${e(row.mode)}</td>`,
    `<td class="filter">${e(row.filter)}</td>`,
    `<td class="duration">${e(row.duration)}</td>`,
  ].join('');
  const details = row.details.length
    ? `<table class="kv">${row.details
        .map(([k, v]) => `<tr><th>${e(k)}</th><td>${e(v)}</td></tr>`)
        .join('')}</table>`
    : '<em>no details</em>';
  return (
    `<tr class="${cls}" data-id="${row.id}" data-session="${e(row.sessionId)}" tabindex="0">${cells}</tr>` +
    `<tr class="details" data-for="${row.id}" hidden><td colspan="${COLUMNS.length}">${details}</td></tr>`
  );
}

/**
 * The filter box: every whitespace-separated term must appear in the row (case-insensitive);
 * `sessionId` (if given) must match the row's session.
 */
export function matchesFilter(row: Pick<Row, 'search' | 'sessionId'>, text: string, sessionId?: string): boolean {
  if (sessionId && row.sessionId !== sessionId) {
    return false;
  }
  const terms = text.toLowerCase().split(/\s+/).filter(Boolean);
  return terms.every((t) => row.search.includes(t));
}

/** The rows sent to the webview: what it needs to filter and draw. */
export interface WireRow {
  id: number;
  sessionId: string;
  kind: RowKind;
  search: string;
  html: string;
}

export function toWire(row: Row): WireRow {
  return { id: row.id, sessionId: row.sessionId, kind: row.kind, search: row.search, html: rowHtml(row) };
}

/** The last `limit` rows of every session, oldest first. */
export class TrafficStore {
  private rows: Row[] = [];
  private nextId = 1;

  constructor(private limit = 2000) {}

  setLimit(limit: number): void {
    this.limit = Math.max(1, Math.floor(limit));
    this.trim();
  }

  add(sessionId: string, event: TrafficEvent): Row {
    const row = eventToRow(sessionId, event, this.nextId++);
    this.rows.push(row);
    this.trim();
    return row;
  }

  /** Adds a session's history (events already shown are recognised by time and content). */
  addHistory(sessionId: string, events: readonly TrafficEvent[]): Row[] {
    const known = new Set(this.rows.filter((r) => r.sessionId === sessionId).map((r) => `${r.time}|${r.search}`));
    const added: Row[] = [];
    for (const ev of events) {
      const candidate = eventToRow(sessionId, ev, 0);
      if (known.has(`${candidate.time}|${candidate.search}`)) {
        continue;
      }
      added.push(this.add(sessionId, ev));
    }
    if (added.length) {
      this.rows.sort((a, b) => a.time - b.time || a.id - b.id);
    }
    return added;
  }

  all(): readonly Row[] {
    return this.rows;
  }

  clear(): void {
    this.rows = [];
  }

  private trim(): void {
    if (this.rows.length > this.limit) {
      this.rows.splice(0, this.rows.length - this.limit);
    }
  }
}
