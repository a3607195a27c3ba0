// The popup and options page: shows the configuration, edits it, and turns the rule on/off.
// Host permissions are asked for inside the click that needs them (Chrome only shows its
// prompt during a user gesture), before anything else awaits.

import { filterMatches, headerNameError, headerValueError, originsFor, parsePattern } from './rules.js';
import { applySetup, parseSetupFragment } from './link.js';
import { load, save } from './state.js';

const $ = (id) => document.getElementById(id);
let config;

function setStatus(state, text) {
  const el = $('status');
  el.dataset.state = state;
  el.textContent = text;
}

function describe(c) {
  if (!c.enabled) return ['off', 'Off: requests are sent unchanged.'];
  const n = c.patterns.length;
  return ['on', `On: "${c.header}: ${c.value}" is added to requests matching ${n} pattern${n === 1 ? '' : 's'}.`];
}

function renderFilterCheck() {
  const filter = config.filter;
  $('filter-hint').hidden = !filter;
  $('filter').textContent = filter ?? '';
  if (!filter) return;
  const name = $('header').value.trim();
  const value = $('value').value.trim();
  const ok = name && value ? filterMatches(filter, name, value) : undefined;
  $('filter-check').textContent =
    ok === true ? '(the header above matches it)' : ok === false ? '(the header above does NOT match it)' : ok === null ? '(cannot check this filter here)' : '';
}

function render() {
  $('enabled').checked = config.enabled;
  $('header').value = config.header;
  $('value').value = config.value;
  const list = $('patterns');
  list.replaceChildren(
    ...config.patterns.map((p) => {
      const li = document.createElement('li');
      li.textContent = p;
      const rm = document.createElement('button');
      rm.type = 'button';
      rm.textContent = 'Remove';
      rm.title = `Remove ${p}`;
      rm.addEventListener('click', () => removePattern(p));
      li.append(rm);
      return li;
    }),
  );
  renderFilterCheck();
  setStatus(...describe(config));
}

/** Stores `next` (installing its rules); on failure keeps the previous configuration. */
async function commit(next) {
  try {
    await save(next);
    config = next;
    render();
    return true;
  } catch (e) {
    render();
    setStatus('error', e.message);
    return false;
  }
}

function headerFromForm() {
  const header = $('header').value.trim();
  const value = $('value').value.trim();
  const err = headerNameError(header) ?? headerValueError(value);
  return { header, value, err };
}

async function saveHeader() {
  const { header, value, err } = headerFromForm();
  if (err) return setStatus('error', err);
  await commit({ ...config, header, value });
}

async function toggle() {
  const on = $('enabled').checked;
  if (!on) return commit({ ...config, enabled: false });
  const { header, value, err } = headerFromForm();
  if (err) {
    $('enabled').checked = false;
    return setStatus('error', err);
  }
  let origins;
  try {
    origins = originsFor(config.patterns);
  } catch (e) {
    $('enabled').checked = false;
    return setStatus('error', e.message);
  }
  if (!origins.length) {
    $('enabled').checked = false;
    return setStatus('error', 'add a URL pattern first');
  }
  // Already-granted origins are granted again without a prompt.
  const granted = await chrome.permissions.request({ origins });
  if (!granted) {
    $('enabled').checked = false;
    return setStatus('error', `Chrome did not grant access to ${origins.join(', ')}`);
  }
  await commit({ ...config, header, value, enabled: true });
}

async function addPattern() {
  const text = $('new-pattern').value.trim();
  let parsed;
  try {
    parsed = parsePattern(text);
  } catch (e) {
    return setStatus('error', e.message);
  }
  if (config.patterns.includes(parsed.pattern)) return setStatus('error', `${parsed.pattern} is already in the list`);
  const granted = await chrome.permissions.request({ origins: [parsed.origin] });
  if (!granted) return setStatus('error', `Chrome did not grant access to ${parsed.origin}`);
  if (await commit({ ...config, patterns: [...config.patterns, parsed.pattern] })) $('new-pattern').value = '';
}

async function removePattern(pattern) {
  const patterns = config.patterns.filter((p) => p !== pattern);
  const next = { ...config, patterns, enabled: config.enabled && patterns.length > 0 };
  if (!(await commit(next))) return;
  // Give back the access nobody needs any more.
  const still = new Set(originsFor(patterns));
  const unused = originsFor([pattern]).filter((o) => !still.has(o));
  if (unused.length) await chrome.permissions.remove({ origins: unused }).catch(() => undefined);
}

async function init() {
  config = await load();
  const fields = parseSetupFragment(location.hash);
  if (Object.keys(fields).length) {
    // A setup link: fill the form from it (always off until the user turns it on), and drop
    // the fragment so a reload does not apply it again.
    await commit(applySetup(config, fields));
    history.replaceState(null, '', location.pathname);
  }
  render();
  $('enabled').addEventListener('change', toggle);
  $('save-header').addEventListener('click', saveHeader);
  $('add-pattern').addEventListener('click', addPattern);
  $('new-pattern').addEventListener('keydown', (e) => e.key === 'Enter' && addPattern());
  $('header').addEventListener('input', renderFilterCheck);
  $('value').addEventListener('input', renderFilterCheck);
  document.body.dataset.ready = 'true';
}

init().catch((e) => setStatus('error', e.message));
