// "mirrord: Debug from browser": which sessions can offer the browser extension's setup link,
// and what to tell the user. The link itself comes from the daemon (SessionInfo.browser, built
// by server/src/browser.rs), so the CLI and the IDE always offer the same one.

import { BrowserSetup, SessionInfo } from './api';

export interface BrowserOffer {
  sessionId: string;
  /** Quick-pick label and detail when several sessions offer a link. */
  label: string;
  description: string;
  setup: BrowserSetup;
}

/** The live sessions that steal with a header filter, newest first. */
export function browserOffers(sessions: SessionInfo[]): BrowserOffer[] {
  return sessions
    .filter((s) => s.browser && (s.state === 'ready' || s.state === 'starting'))
    .sort((a, b) => b.startedAt - a.startedAt)
    .map((s) => ({
      sessionId: s.sessionId,
      label: s.target,
      description: headerText(s.browser!),
      setup: s.browser!,
    }));
}

/** `x-user: alice`, or the filter when it names no single header. */
export function headerText(setup: BrowserSetup): string {
  return setup.header && setup.value ? `${setup.header}: ${setup.value}` : `a header matching ${setup.filter}`;
}

/** The message shown with the link (the link itself goes to the clipboard). */
export function offerMessage(setup: BrowserSetup): string {
  const what =
    setup.header && setup.value
      ? `it sets up the mirrord browser extension to add "${setup.header}: ${setup.value}" to the URLs you choose`
      : `the filter ${setup.filter} names no single value: enter a header that matches it`;
  return `mirrord: paste the link into Chromium's address bar (the extension must be installed): ${what}.`;
}

/** Why there is nothing to offer. */
export const NO_OFFER_MESSAGE =
  'mirrord: no running session steals with a header filter. Set "feature.network.incoming": {"mode": "steal", "http_filter": {"header_filter": "x-user: alice"}} in .mirrord/mirrord.json and start debugging, then run this again.';
