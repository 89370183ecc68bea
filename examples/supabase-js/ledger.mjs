// @ts-check
// ducto from JavaScript with supabase-js: the same RPCs the Python client and the edge
// functions call, typed by the generated `Database` (supabase/functions/_shared).
//
//   import { chargeUsage, checkFeature, myAccount, serverClient, userClient } from "./ledger.mjs";
//
//   // in the browser or app, as the signed-in user (row-level security applies)
//   const me = userClient(SUPABASE_URL, SUPABASE_ANON_KEY, async () => session.access_token);
//   const { user_id, available, plan, teams, transactions } = await myAccount(me);
//   if ((await checkFeature(me, user_id, "export")).has_feature) showExportButton();
//
//   // on a trusted server, as the service role: the database prices the usage
//   const server = serverClient(SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY);
//   const charged = await chargeUsage(server, user_id, { model: "gpt-4o", input_tokens: 900 });
//
// (tests/js/snippets.test.mjs type-checks those lines, as an app would hold them.)
// Every function throws a LedgerError carrying the database's code (docs/ledger.md,
// "Errors") and the HTTP status. On Node 20, run with `node --experimental-websocket`:
// supabase-js needs WebSocket, which Node 22 has built in.

import { createClient } from "@supabase/supabase-js";

/**
 * @typedef {import("../../supabase/functions/_shared/database.types.ts").Database} Database
 * @typedef {import("../../supabase/functions/_shared/database.types.ts").Json} Json
 * @typedef {import("../../supabase/functions/_shared/database.types.ts").RpcResult<"credit_deduct_usage">} DeductResult
 * @typedef {import("../../supabase/functions/_shared/database.types.ts").RpcResult<"credit_get_balance">} BalanceResult
 * @typedef {import("../../supabase/functions/_shared/database.types.ts").RpcResult<"credit_get_user_plan">} UserPlan
 * @typedef {import("../../supabase/functions/_shared/database.types.ts").RpcResult<"credit_check_feature">} FeatureCheck
 * @typedef {import("../../supabase/functions/_shared/database.types.ts").TableRow<"credit_transactions">} Transaction
 * @typedef {import("../../supabase/functions/_shared/account.types.ts").Account} Account
 * @typedef {import("@supabase/supabase-js").SupabaseClient<Database>} Client
 */

/** An answer of the ledger that is an error: `code` is ducto's SQLSTATE (or PostgREST's). */
export class LedgerError extends Error {
  /**
   * @param {{ code?: string, message: string, details?: string | null }} error
   * @param {number} status
   */
  constructor(error, status) {
    super(error.message);
    this.name = "LedgerError";
    this.code = error.code ?? "";
    this.status = status;
    this.details = error.details ?? null;
  }
}

/**
 * The data of a supabase-js answer, or a LedgerError.
 * @template T
 * @param {{ data: T | null, error: { code?: string, message: string, details?: string | null } | null, status: number }} answer
 * @returns {T}
 */
function unwrap({ data, error, status }) {
  if (error) throw new LedgerError(error, status);
  return /** @type {T} */ (data);
}

// A client here makes one request at a time for its caller: no session of its own.
const AUTH = { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false };

/**
 * A signed-in user's client: the anon key, and the user's access token on every request.
 * @param {string} url
 * @param {string} anonKey
 * @param {() => Promise<string>} accessToken the current access token (Supabase Auth's
 *   `session.access_token`, or your auth provider's)
 * @returns {Client}
 */
export function userClient(url, anonKey, accessToken) {
  return createClient(url, anonKey, { auth: AUTH, accessToken });
}

/**
 * A trusted server's client: the service-role key, which must never reach a browser.
 * @param {string} url
 * @param {string} serviceRoleKey
 * @returns {Client}
 */
export function serverClient(url, serviceRoleKey) {
  return createClient(url, serviceRoleKey, { auth: AUTH });
}

/**
 * The user's own balance, plan, teams (with their pools' balances) and newest
 * transactions, from the credit-balance edge function.
 * @param {Client} client a userClient
 * @param {number} [limit] how many transactions (1 to 100, default 20)
 * @returns {Promise<Account>}
 */
export async function myAccount(client, limit = 20) {
  const { data, error, response } = await client.functions.invoke(
    `credit-balance?limit=${limit}`,
    { method: "GET" },
  );
  if (error) {
    // a FunctionsHttpError carries the function's answer: {code, message, details, hint}
    const status = response?.status ?? 0;
    throw new LedgerError(response ? await response.json() : error, status);
  }
  return data;
}

/**
 * A user's balance through the RPC: without `userId`, the signed-in user's own (a
 * signed-in user may read only their own); the service role names the user.
 * @param {Client} client
 * @param {string} [userId]
 * @returns {Promise<BalanceResult>}
 */
export async function getBalance(client, userId) {
  return unwrap(
    await (userId === undefined
      ? client.rpc("credit_get_balance")
      : client.rpc("credit_get_balance", { p_user_id: userId })),
  );
}

/**
 * A user's plan and its features: the assigned plan, else the default plan, else none
 * (`plan_id` null, no features). Without `userId`, the signed-in user's own (a signed-in
 * user may read only their own); the service role names the user.
 * @param {Client} client
 * @param {string} [userId]
 * @returns {Promise<UserPlan>}
 */
export async function getPlan(client, userId) {
  return unwrap(
    await (userId === undefined
      ? client.rpc("credit_get_user_plan")
      : client.rpc("credit_get_user_plan", { p_user_id: userId })),
  );
}

/**
 * Whether a user's plan has a feature (absent, null and false: no), with its value, such
 * as a limit. A signed-in user may check only their own; enforce on the server too.
 * @param {Client} client
 * @param {string} userId
 * @param {string} feature
 * @returns {Promise<FeatureCheck>}
 */
export async function checkFeature(client, userId, feature) {
  return unwrap(
    await client.rpc("credit_check_feature", { p_user_id: userId, p_feature: feature }),
  );
}

/**
 * A user's journal, oldest first: their own as a user (row-level security), any as the
 * service role.
 * @param {Client} client
 * @param {string} userId
 * @returns {Promise<Transaction[]>}
 */
export async function journal(client, userId) {
  return unwrap(
    await client.from("credit_transactions").select("*").eq("user_id", userId).order("seq"),
  );
}

/**
 * Charges a usage event, priced by the database under the active pricing.
 * @param {Client} client a serverClient
 * @param {string} userId
 * @param {Json} metrics `{model, input_tokens, output_tokens, ...}` (docs/pricing.md)
 * @param {{ metadata?: Json, idempotencyKey?: string }} [options]
 * @returns {Promise<DeductResult>}
 */
export async function chargeUsage(client, userId, metrics, options = {}) {
  return unwrap(
    await client.rpc("credit_deduct_usage", {
      p_user_id: userId,
      p_metrics: metrics,
      p_metadata: options.metadata ?? {},
      p_idempotency_key: options.idempotencyKey,
    }),
  );
}
