// The setup link: what `mirrord exec` and the VS Code command hand to the user.
//
//   chrome-extension://<extension id>/options.html#header=x-user&value=alice&filter=x-user%3A%20alice
//
// The fixed extension id (manifest `key`) makes the address predictable. The parameters live
// in the fragment, form-encoded: `header` and `value` (the concrete header, when the session's
// filter names one), `filter` (the session's header filter as written, shown as a hint and
// used to check what the user types), `pattern` (repeatable, URL patterns to offer). Opening the
// link only fills the form: nothing is applied until the user turns the rule on, which is also
// when the browser asks for the host permissions.

/** Parses a link's fragment (`#...` or `...`) into the fields it sets (absent ones are left out). */
export function parseSetupFragment(fragment) {
  const text = String(fragment ?? '').replace(/^#/, '');
  const out = {};
  if (!text) return out;
  const params = new URLSearchParams(text);
  for (const key of ['header', 'value', 'filter']) {
    const v = params.get(key);
    if (v !== null) out[key] = v;
  }
  const patterns = params.getAll('pattern').map((p) => p.trim()).filter(Boolean);
  if (patterns.length) out.patterns = patterns;
  return out;
}

/** Builds a fragment for `{header, value, filter, patterns}` (the inverse of
 * parseSetupFragment; the Rust CLI writes the same format). */
export function setupFragment(fields) {
  const params = new URLSearchParams();
  for (const key of ['header', 'value', 'filter']) {
    if (fields[key]) params.append(key, fields[key]);
  }
  for (const p of fields.patterns ?? []) params.append('pattern', p);
  const s = params.toString();
  return s ? `#${s}` : '';
}

/** Merges link fields into a stored configuration: the link's header replaces the stored one
 * (a new session), patterns are added to the user's (they stay the user's choice). The result
 * is always off: the user turns it on after reviewing. */
export function applySetup(config, fields) {
  const next = { ...config, patterns: [...(config.patterns ?? [])] };
  if (fields.header !== undefined) {
    next.header = fields.header;
    next.value = fields.value ?? '';
  }
  if (fields.filter !== undefined) next.filter = fields.filter;
  for (const p of fields.patterns ?? []) {
    if (!next.patterns.includes(p)) next.patterns.push(p);
  }
  next.enabled = false;
  return next;
}
