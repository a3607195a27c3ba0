// The "mirrord: Debug from browser" command: picks a session that steals with a header filter
// and hands its browser-extension setup link to the user (clipboard + message + log).

import * as vscode from 'vscode';
import { ListSessionsResult, METHODS } from './logic/api';
import { browserOffers, NO_OFFER_MESSAGE, offerMessage } from './logic/browser';
import { messageOf, MirrordServer } from './server';

export async function debugFromBrowser(srv: MirrordServer, output: vscode.OutputChannel): Promise<void> {
  let sessions;
  try {
    sessions = (await srv.request<ListSessionsResult>(METHODS.listSessions, {})).sessions;
  } catch (e) {
    void vscode.window.showErrorMessage(`mirrord: ${messageOf(e)}`);
    return;
  }
  const offers = browserOffers(sessions);
  if (!offers.length) {
    void vscode.window.showInformationMessage(NO_OFFER_MESSAGE);
    return;
  }
  const offer =
    offers.length === 1
      ? offers[0]
      : await vscode.window.showQuickPick(offers, { placeHolder: 'Debug which mirrord session from the browser?' });
  if (!offer) return;
  await vscode.env.clipboard.writeText(offer.setup.link);
  output.appendLine(`[mirrord] debug from the browser (session ${offer.sessionId}): ${offer.setup.link}`);
  const copy = 'Copy link again';
  const choice = await vscode.window.showInformationMessage(`${offerMessage(offer.setup)} The link is on the clipboard.`, copy);
  if (choice === copy) await vscode.env.clipboard.writeText(offer.setup.link);
}
