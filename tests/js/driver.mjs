// A supabase-js client that takes its orders from another process, one JSON object per
// line on stdin, and answers one per line on stdout: how tests/integration/test_clients_agree.py
// interleaves JavaScript calls with Python's and the edge functions'. It calls the ledger
// only through examples/supabase-js/ledger.mjs.
//
//   {"op": "charge", "user": ..., "metrics": {...}, "key": ...}   service role
//   {"op": "rpc", "name": ..., "args": {...}}                      service role
//   {"op": "balance" | "journal" | "plan", "user": ..., "token": ...}
//                                                                  as the signed-in user
//   {"op": "account", "token": ...}                                as the signed-in user
//
// Answers {"ok": <data>} or {"error": {"code", "message", "status"}}.

import { createInterface } from "node:readline";
import {
  chargeUsage,
  getBalance,
  getPlan,
  journal,
  LedgerError,
  myAccount,
  serverClient,
  userClient,
} from "../../examples/supabase-js/ledger.mjs";

const { SUPABASE_URL, SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY } = process.env;
const server = serverClient(SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY);
const asUser = (token) => userClient(SUPABASE_URL, SUPABASE_ANON_KEY, () => Promise.resolve(token));

async function run(order) {
  switch (order.op) {
    case "charge":
      return await chargeUsage(server, order.user, order.metrics, { idempotencyKey: order.key });
    case "rpc": {
      const { data, error, status } = await server.rpc(order.name, order.args);
      if (error) throw new LedgerError(error, status);
      return data;
    }
    case "balance":
      return await getBalance(asUser(order.token), order.user);
    case "journal":
      return await journal(asUser(order.token), order.user);
    case "plan":
      return await getPlan(asUser(order.token), order.user);
    case "account":
      return await myAccount(asUser(order.token), 100);
    default:
      throw new Error(`unknown op ${order.op}`);
  }
}

for await (const line of createInterface({ input: process.stdin })) {
  let answer;
  try {
    answer = { ok: await run(JSON.parse(line)) };
  } catch (error) {
    if (!(error instanceof LedgerError)) throw error;
    answer = { error: { code: error.code, message: error.message, status: error.status } };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
