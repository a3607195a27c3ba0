// The target picker's list, without VS Code: most recently used targets first.

import { errorKindOf } from './api';
import type { TargetInfo } from './api';

export interface TargetItem {
  label: string;
  description?: string;
  detail?: string;
  target: string;
  recent: boolean;
}

/** How many targets the picker remembers per workspace. */
export const MAX_RECENT = 10;

/** `target` moved to the front of the recent list (no duplicates, bounded). */
export function rememberTarget(recent: readonly string[], target: string, max = MAX_RECENT): string[] {
  return [target, ...recent.filter((t) => t !== target)].slice(0, max);
}

function describe(t: TargetInfo): string | undefined {
  return t.available ? undefined : 'not available';
}

/**
 * Picker items: the recently used targets that the daemon still lists, most recent first, then
 * the others in the daemon's order.
 */
export function orderTargets(targets: readonly TargetInfo[], recent: readonly string[]): TargetItem[] {
  const byPath = new Map(targets.map((t) => [t.path, t]));
  const items: TargetItem[] = [];
  const seen = new Set<string>();
  for (const r of recent) {
    const t = byPath.get(r);
    if (!t || seen.has(r)) {
      continue;
    }
    seen.add(r);
    items.push({ label: t.path, description: ['most recent', describe(t)].filter(Boolean).join(', '), target: t.path, recent: true });
  }
  for (const t of targets) {
    if (seen.has(t.path)) {
      continue;
    }
    seen.add(t.path);
    items.push({ label: t.path, description: describe(t), target: t.path, recent: false });
  }
  // Only the first recent one is "most recent"; the others are just "recent".
  for (let i = 1; i < items.length; i++) {
    if (items[i].recent) {
      items[i].description = ['recent', describe(byPath.get(items[i].target)!)].filter(Boolean).join(', ');
    }
  }
  return items;
}

/** Whether a startSession failure is the daemon's "no target" error (then the picker asks). */
export function isNoTargetError(e: unknown): boolean {
  return errorKindOf(e) === 'no_target';
}
