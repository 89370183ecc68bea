// The page's script: reads a signed-in user's account through the supabase-js example and
// shows each read as one line, `<read>: <JSON>` on success or `<read>: error <status>
// <code>: <message>` for a LedgerError. Anything else (a network failure that never
// became an answer) would be a bug of the page: it shows as `<read>: failed <error>`.
// The project's URL and anon key come in the page's hash, as JSON.

import {
  getBalance,
  journal,
  LedgerError,
  myAccount,
  userClient,
} from "../../../examples/supabase-js/ledger.mjs";

const { url, anonKey } = JSON.parse(decodeURIComponent(location.hash.slice(1)));

/** One line of what the page shows for a read. */
async function line(name, read) {
  try {
    return `${name}: ${JSON.stringify(await read())}`;
  } catch (error) {
    if (error instanceof LedgerError) {
      return `${name}: error ${error.status} ${error.code}: ${error.message}`;
    }
    return `${name}: failed ${error}`;
  }
}

/** Shows the account of the user whose access token is `token`; answers what it shows. */
async function showAccount(token, userId) {
  const me = userClient(url, anonKey, () => Promise.resolve(token));
  const lines = [
    await line("balance", () => getBalance(me, userId)),
    await line("history", () => journal(me, userId)),
    await line("account", () => myAccount(me, 10)),
  ];
  const shown = document.getElementById("account");
  shown.textContent = lines.join("\n");
  return shown.textContent;
}

Object.assign(globalThis, { showAccount });
