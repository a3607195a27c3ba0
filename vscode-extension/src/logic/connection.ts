// Which of the daemon's sessions have lost their agent connection for now (`sessionChanged`
// with state `reconnecting`), and how the status bar shows it. Kept free of `vscode` so that
// it is unit-tested.

import { SessionState } from './api';

/** What the status bar item shows. */
export interface StatusLook {
  text: string;
  tooltip: string;
  /** Drawn with the warning background. */
  warning: boolean;
}

export class SessionConnections {
  private readonly reconnecting = new Set<string>();

  /** Follows one `sessionChanged`; true when what the status bar shows changes. */
  update(sessionId: string, state: SessionState): boolean {
    const before = this.reconnecting.size;
    if (state === 'reconnecting') {
      this.reconnecting.add(sessionId);
    } else {
      // ready (resumed), error (gone for good), stopped: no longer reconnecting.
      this.reconnecting.delete(sessionId);
    }
    return before !== this.reconnecting.size;
  }

  /** How many sessions are reconnecting now. */
  count(): number {
    return this.reconnecting.size;
  }
}

/** The status bar item for mirrord being on or off, and sessions reconnecting. */
export function statusLook(enabled: boolean, reconnecting: number): StatusLook {
  if (reconnecting > 0) {
    const which = reconnecting === 1 ? 'a session lost' : `${reconnecting} sessions lost`;
    return {
      text: '$(sync~spin) mirrord: reconnecting',
      tooltip:
        `mirrord: ${which} the connection to the cluster and is reconnecting; programs keep ` +
        'running, their lookups and new connections fail until it is back.',
      warning: true,
    };
  }
  return enabled
    ? {
        text: '$(pass-filled) mirrord',
        tooltip: "mirrord is on for this workspace: launches get the target's network. Click to turn it off.",
        warning: true,
      }
    : {
        text: '$(circle-large-outline) mirrord',
        tooltip: 'mirrord is off for this workspace. Click to turn it on.',
        warning: false,
      };
}
