// Keeps the rules consistent with what the user allowed: when a host permission is taken away
// (chrome://extensions, or the permission API), patterns under it are dropped, so the stored
// configuration never shows a pattern whose rule Chrome silently ignores.

import { load, save } from './state.js';
import { parsePattern } from './rules.js';

chrome.permissions.onRemoved.addListener(async (removed) => {
  const gone = new Set(removed.origins ?? []);
  if (!gone.size) return;
  const config = await load();
  const patterns = config.patterns.filter((p) => {
    try {
      return !gone.has(parsePattern(p).origin);
    } catch {
      return false;
    }
  });
  if (patterns.length === config.patterns.length) return;
  const next = { ...config, patterns, enabled: config.enabled && patterns.length > 0 };
  await save(next).catch((e) => console.warn(`mirrord: could not update the rules: ${e.message}`));
});
