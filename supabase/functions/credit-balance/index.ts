// credit-balance: a signed-in user's own balance, plan and recent transactions.
//
//   GET /functions/v1/credit-balance?limit=20
//   Authorization: Bearer <the user's access token>
//
// Answers {user_id, balance, held, available, plan, transactions}. Everything is read as
// the user, so row-level security applies: nobody reads another user's ledger here.

import { decodeJwt } from "npm:jose@6.2.18";
import {
  allowMethod,
  bearerAuthorization,
  HttpError,
  json,
  serve,
  unwrap,
} from "../_shared/http.ts";
import { callerClient } from "../_shared/supabase.ts";

const DEFAULT_LIMIT = 20;
const MAX_LIMIT = 100;

// The journal columns a user sees (docs/ledger.md, "Journal types").
const TRANSACTION_COLUMNS = "id, seq, type, amount, balance_after, model, usage, job_name," +
  " metadata, refund_of, reservation_id, created_at";

/**
 * The user id of a user's access token. Read without checking the signature: PostgREST
 * verifies the token on every call this function makes with it, and credit_get_balance
 * refuses a user id other than the token's own, so a forged token reads nothing.
 */
function userIdOf(token: string): string {
  let claims;
  try {
    claims = decodeJwt(token);
  } catch {
    throw new HttpError(401, "unauthorized", "the bearer token is not a JWT");
  }
  if (claims.role !== "authenticated" || typeof claims.sub !== "string" || !claims.sub) {
    throw new HttpError(403, "user_token_required", "call with a signed-in user's access token");
  }
  return claims.sub;
}

function limitOf(url: URL): number {
  const text = url.searchParams.get("limit");
  if (text === null) return DEFAULT_LIMIT;
  const limit = /^[0-9]{1,3}$/.test(text) ? Number(text) : NaN;
  if (!(limit >= 1 && limit <= MAX_LIMIT)) {
    throw new HttpError(
      400,
      "invalid_request",
      `limit must be a whole number from 1 to ${MAX_LIMIT}`,
    );
  }
  return limit;
}

async function balance(req: Request): Promise<Response> {
  allowMethod(req, "GET");
  const { header, token } = bearerAuthorization(req);
  const userId = userIdOf(token);
  const limit = limitOf(new URL(req.url));
  const client = callerClient(header);
  const [account, recent] = await Promise.all([
    client.rpc("credit_get_balance", { p_user_id: userId }),
    client.from("credit_transactions").select(TRANSACTION_COLUMNS)
      .eq("user_id", userId).order("seq", { ascending: false }).limit(limit),
  ]);
  return json({
    ...unwrap(account),
    // Plans come with their own RPC; until then a user has none.
    plan: null,
    transactions: unwrap(recent),
  });
}

export default { fetch: serve(balance, { cors: true }) } satisfies Deno.ServeDefaultExport;
