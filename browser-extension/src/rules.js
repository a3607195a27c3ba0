// The extension's whole policy as pure functions (no chrome.* here, so node's test runner
// covers it): which header names and values are acceptable, how a URL pattern the user chose
// becomes a host permission to ask for and a declarativeNetRequest rule, and the rule set for a
// configuration.
//
// Patterns are Chrome match patterns (`http://10.244.0.10/*`, `https://*.example.com/api/*`):
// the one syntax that is at once what chrome.permissions.request takes and what users already
// know from extension settings, so a pattern never grants more than it matches.

/** Every resource type: without `main_frame` in the list a rule skips top-level navigations
 * (declarativeNetRequest's default), and typing the pod's address is the first thing users do. */
export const RESOURCE_TYPES = Object.freeze([
  'main_frame',
  'sub_frame',
  'stylesheet',
  'script',
  'image',
  'font',
  'object',
  'xmlhttprequest',
  'ping',
  'csp_report',
  'media',
  'websocket',
  'webtransport',
  'webbundle',
  'other',
]);

/** Most patterns one configuration may hold (each is one dynamic rule; Chrome allows 1,000
 * regex rules per extension, this keeps the page usable). */
export const MAX_PATTERNS = 50;

// RFC 9110 token characters.
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// Request headers that the browser owns or that would change where a request goes; Chrome
// refuses some of them in modifyHeaders, and the others would break the request rather than
// route it.
const FORBIDDEN_HEADERS = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'upgrade',
  'te',
  'trailer',
  'keep-alive',
  'cookie',
]);

/** Checks a header name; returns an error message or null. */
export function headerNameError(name) {
  if (typeof name !== 'string' || name.length === 0) return 'the header name is empty';
  if (!TOKEN.test(name)) return `"${name}" is not a valid header name (letters, digits and !#$%&'*+.^_\`|~- only)`;
  if (FORBIDDEN_HEADERS.has(name.toLowerCase())) return `the browser manages "${name}" itself; choose another header`;
  return null;
}

/** Checks a header value; returns an error message or null. */
export function headerValueError(value) {
  if (typeof value !== 'string' || value.length === 0) return 'the header value is empty';
  // Visible ASCII, spaces and tabs inside; no control characters (CR/LF would split the
  // request), no leading or trailing whitespace (HTTP strips it, so the filter would not see it).
  if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) return 'the header value contains control characters';
  if (value.trim() !== value) return 'the header value starts or ends with whitespace';
  return null;
}

/**
 * Parses a match pattern. Returns `{ pattern, scheme, host, port, path, origin }` where
 * `origin` is the host permission to request (`scheme://host[:port]/*`), or throws an Error
 * whose message says what is wrong.
 */
export function parsePattern(input) {
  if (typeof input !== 'string') throw new Error('a pattern must be text');
  const pattern = input.trim();
  const m = /^(\*|https?):\/\/([^/]*)(\/.*)?$/.exec(pattern);
  if (!m) {
    throw new Error(`"${pattern}" is not a URL pattern: write scheme://host/path, e.g. http://10.244.0.10/* (scheme http, https or *)`);
  }
  const [, scheme, authority, rawPath] = m;
  const path = rawPath ?? '/*';
  let host = authority;
  let port = null;
  const ipv6 = /^(\[[0-9a-fA-F:.]+\])(?::(\d+|\*))?$/.exec(authority);
  if (ipv6) {
    host = ipv6[1];
    port = ipv6[2] ?? null;
  } else {
    const hp = /^([^:]*)(?::(\d+|\*))?$/.exec(authority);
    if (!hp) throw new Error(`"${authority}" is not a host[:port]`);
    host = hp[1];
    port = hp[2] ?? null;
  }
  if (host === '') throw new Error(`"${pattern}" has no host`);
  if (host !== '*' && !ipv6) {
    const bare = host.startsWith('*.') ? host.slice(2) : host;
    if (!/^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$/.test(bare)) {
      throw new Error(`"${host}" is not a host name ("*" may only stand alone or start it, as in *.example.com)`);
    }
  }
  if (port !== null && port !== '*') {
    const n = Number(port);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new Error(`port ${port} is out of range`);
  }
  const origin = `${scheme}://${host.toLowerCase()}${port === null ? '' : `:${port}`}/*`;
  return { pattern: `${scheme}://${authority}${path}`, scheme, host: host.toLowerCase(), port, path, origin };
}

const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

/** The RE2 regex (declarativeNetRequest `regexFilter`) for a parsed pattern: the whole URL,
 * anchored at both ends, like the match pattern itself. */
export function patternRegex(p) {
  const scheme = p.scheme === '*' ? 'https?' : p.scheme;
  let host;
  if (p.host === '*') host = '(?:\\[[0-9a-f:.]+\\]|[^/?#:@\\[\\]]+)';
  else if (p.host.startsWith('*.')) host = `(?:[^/?#:@]+\\.)?${escapeRe(p.host.slice(2))}`;
  else host = escapeRe(p.host);
  let port;
  if (p.port === null || p.port === '*') port = '(?::[0-9]+)?';
  else if ((p.scheme === 'http' && p.port === '80') || (p.scheme === 'https' && p.port === '443')) {
    // Browsers drop a scheme's default port from the URL.
    port = '';
  } else port = `:${p.port}`;
  const path = p.path.split('*').map(escapeRe).join('.*');
  return `^${scheme}://${host}${port}${path}$`;
}

/**
 * The dynamic rules for a configuration `{ enabled, header, value, patterns }`: one
 * modifyHeaders rule per pattern (ids 1..n), or none when it is off or incomplete.
 * Throws when the configuration is invalid, so nothing half-valid is ever installed.
 */
export function buildRules(config) {
  if (!config || !config.enabled) return [];
  const nameErr = headerNameError(config.header);
  if (nameErr) throw new Error(nameErr);
  const valueErr = headerValueError(config.value);
  if (valueErr) throw new Error(valueErr);
  const patterns = config.patterns ?? [];
  if (patterns.length > MAX_PATTERNS) throw new Error(`at most ${MAX_PATTERNS} URL patterns`);
  return patterns.map((text, i) => ({
    id: i + 1,
    priority: 1,
    action: {
      type: 'modifyHeaders',
      requestHeaders: [{ header: config.header, operation: 'set', value: config.value }],
    },
    condition: {
      regexFilter: patternRegex(parsePattern(text)),
      isUrlFilterCaseSensitive: false,
      resourceTypes: [...RESOURCE_TYPES],
    },
  }));
}

/** The host permissions a configuration needs (one per distinct origin, sorted). */
export function originsFor(patterns) {
  return [...new Set((patterns ?? []).map((p) => parsePattern(p).origin))].sort();
}

/**
 * Whether `regex` (the session's header filter, a Rust regex) matches `name: value` as the
 * agent sees it (header names lowercased, as HTTP/2 and hyper give them). `null` when the
 * filter is not also a valid JavaScript regex (then nothing can be said here).
 */
export function filterMatches(regex, name, value) {
  let re;
  try {
    re = new RegExp(regex);
  } catch {
    return null;
  }
  return re.test(`${String(name).toLowerCase()}: ${value}`);
}
