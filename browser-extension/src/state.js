// The configuration in chrome.storage.local and the dynamic rules that carry it out. Every
// change goes through `save`, which installs the rules first and stores second, so the stored
// configuration never claims rules that Chrome refused.

import { buildRules, originsFor } from './rules.js';

const KEY = 'config';

export const DEFAULT_CONFIG = Object.freeze({
  enabled: false,
  header: '',
  value: '',
  filter: '',
  patterns: [],
});

export async function load() {
  const got = await chrome.storage.local.get(KEY);
  return { ...DEFAULT_CONFIG, ...(got[KEY] ?? {}) };
}

/** Host permissions of `patterns` that the extension does not hold. */
export async function missingOrigins(patterns) {
  const missing = [];
  for (const origin of originsFor(patterns)) {
    if (!(await chrome.permissions.contains({ origins: [origin] }))) missing.push(origin);
  }
  return missing;
}

/** Replaces the extension's dynamic rules with those of `config`. */
export async function installRules(config) {
  const rules = buildRules(config);
  const old = await chrome.declarativeNetRequest.getDynamicRules();
  await chrome.declarativeNetRequest.updateDynamicRules({
    removeRuleIds: old.map((r) => r.id),
    addRules: rules,
  });
  return rules;
}

/** Validates, installs and stores `config`. An enabled configuration needs every host
 * permission of its patterns (the caller asks for them in the click that turns it on);
 * without them it is refused rather than installed half-working. */
export async function save(config) {
  if (config.enabled) {
    const missing = await missingOrigins(config.patterns);
    if (missing.length) throw new Error(`no access to ${missing.join(', ')}: allow it when Chrome asks`);
    if (!config.patterns.length) throw new Error('add a URL pattern first');
  }
  const rules = await installRules(config);
  await chrome.storage.local.set({ [KEY]: config });
  return rules;
}
