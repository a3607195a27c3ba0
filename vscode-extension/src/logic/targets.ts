// The target picker's list, without VS Code: most recently used targets first.

import { errorKindOf } from './api';
import type { ListTargetsResult, TargetInfo } from './api';

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

/** The picker item that switches the namespace (its `target` is never a target path). */
export const SWITCH_NAMESPACE = '\u0000switch-namespace';

/**
 * The target picker's items for one `mirrord/listTargets` answer: the targets (recent first),
 * then, when the daemon listed namespaces (a cluster is configured), an item to switch the
 * namespace. `namespace` is the one the list is for (undefined: the kube context's).
 */
export function pickerItems(res: ListTargetsResult, recent: readonly string[], namespace?: string): TargetItem[] {
  const items = orderTargets(res.targets, recent);
  if (res.namespaces && res.namespaces.length) {
    items.push({
      label: '$(symbol-namespace) Switch namespace…',
      description: `now: ${namespace ?? "the kube context's"}`,
      target: SWITCH_NAMESPACE,
      recent: false,
    });
  }
  return items;
}

export interface NamespaceItem {
  label: string;
  description?: string;
  namespace: string;
}

/** The namespace picker's items: the current one first (marked), then the others in order. */
export function namespaceItems(namespaces: readonly string[], current?: string): NamespaceItem[] {
  const sorted = [...new Set(namespaces)].sort();
  const first = current && sorted.includes(current) ? [current] : [];
  return [
    ...first.map((n) => ({ label: n, description: 'current', namespace: n })),
    ...sorted.filter((n) => n !== current).map((n) => ({ label: n, namespace: n })),
  ];
}
