// credit-balance: a signed-in user's own balance, plan, teams and recent transactions.
//
//   GET /functions/v1/credit-balance?limit=20
//   Authorization: Bearer <the user's access token>
//
// Answers {user_id, balance, held, available, plan, teams, transactions}. Everything is
// read as the user, with their token: the database's grants and row-level security
// decide, so nobody reads another user's ledger, plan or teams here.

import { decodeJwt } from "npm:jose@6.2.18";
import { bearerAuthorization, HttpError, json, serve, unwrap } from "../_shared/http.ts";
import { callerClient, type Client } from "../_shared/supabase.ts";
import type { Account } from "../_shared/account.types.ts";

// Account is declared once, without Deno specifics, for apps to import too; readAccount's
// answer must stay assignable to it (deno check).
export type { Account };

const DEFAULT_LIMIT = 20;
const MAX_LIMIT = 100;

// The journal columns a user sees (docs/ledger.md, "Journal types"). Each select is one
// string literal: supabase-js types the rows it answers (and so Account) from it.
const TRANSACTION_COLUMNS =
  "id, seq, type, amount, balance_after, model, usage, job_name, metadata, refund_of, reservation_id, created_at";

// The user's memberships with their team and its pool, embedded through the foreign keys
// (credit_team_members -> credit_teams -> credit_accounts); row-level security lets a
// member read all three.
const MEMBERSHIP_COLUMNS =
  "team_id, role, spend_limit, limit_period, team:credit_teams(name, pool:credit_accounts(balance))";

/**
 * The user id of a user's access token. Read without checking the signature: PostgREST
 * verifies the token on every call this function makes with it, credit_get_balance and
 * credit_get_user_plan refuse a user id other than the token's own, and row-level
 * security shows only the token's own rows, so a forged token reads nothing.
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

/** Everything read with the user's own client, so the database decides what they see. */
async function readAccount(client: Client, userId: string, limit: number): Promise<Account> {
  const [account, plan, memberships, recent] = await Promise.all([
    client.rpc("credit_get_balance", { p_user_id: userId }),
    client.rpc("credit_get_user_plan", { p_user_id: userId }),
    client.from("credit_team_members").select(MEMBERSHIP_COLUMNS)
      .eq("user_id", userId).order("joined_at").order("team_id"),
    client.from("credit_transactions").select(TRANSACTION_COLUMNS)
      .eq("user_id", userId).order("seq", { ascending: false }).limit(limit),
  ]);
  return {
    ...unwrap(account),
    plan: unwrap(plan),
    teams: unwrap(memberships).map(({ team_id, team, ...membership }) => ({
      team_id,
      name: team.name,
      ...membership,
      // the pool account's balance: the sum of its journal (docs/edge-functions.md)
      pool_balance: team.pool.balance,
    })),
    transactions: unwrap(recent),
  };
}

async function balance(req: Request): Promise<Response> {
  const { header, token } = bearerAuthorization(req);
  const userId = userIdOf(token);
  const limit = limitOf(new URL(req.url));
  return json(await readAccount(callerClient(header), userId, limit));
}

export default { fetch: serve("GET", balance) } satisfies Deno.ServeDefaultExport;
