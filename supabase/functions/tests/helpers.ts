// Helpers for the edge functions' tests, which run against the local stack
// (`scripts/run-tests`, or `eval "$(scripts/local-stack up)"` then `deno test`):
// requests go to $SUPABASE_URL/functions/v1/<name> through the gateway, like a client of
// a hosted project, and what really happened is read back as the service role.

import { SignJWT } from "npm:jose@6.2.18";
import type { Json, RpcArgs, RpcName, RpcResult, TableRow } from "../_shared/database.types.ts";

export function stackEnv(name: string): string {
  const value = Deno.env.get(name);
  if (!value) {
    throw new Error(`${name} is not set: run the tests with scripts/run-tests, or after
      eval "$(scripts/local-stack up)"`);
  }
  return value;
}

export const SUPABASE_URL = stackEnv("SUPABASE_URL");
export const ANON_KEY = stackEnv("SUPABASE_ANON_KEY");
export const SERVICE_KEY = stackEnv("SUPABASE_SERVICE_ROLE_KEY");
// Supabase's API keys that are not JWTs: the gateway runs them as anon and service_role
export const PUBLISHABLE_KEY = stackEnv("SUPABASE_PUBLISHABLE_KEY");
export const SECRET_KEY = stackEnv("SUPABASE_SECRET_KEY");

export function newUserId(): string {
  return crypto.randomUUID();
}

/**
 * A Supabase-style access token of user `sub` (role and aud `authenticated`), signed with
 * the stack's secret unless `secret` is given (a forged one); a negative `expiresIn` gives
 * an expired token.
 */
export function userToken(
  sub: string,
  { expiresIn = 3600, secret = stackEnv("SUPABASE_JWT_SECRET"), claims = {} }: {
    expiresIn?: number;
    secret?: string;
    claims?: Record<string, unknown>;
  } = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ role: "authenticated", aud: "authenticated", ...claims })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(sub)
    .setIssuedAt(now)
    .setExpirationTime(now + expiresIn)
    .sign(new TextEncoder().encode(secret));
}

/** An unsigned token (`alg: none`) with the claims of a valid user token. */
export function unsignedToken(sub: string): string {
  const part = (value: unknown) =>
    btoa(JSON.stringify(value)).replaceAll("=", "").replaceAll("+", "-").replaceAll("/", "_");
  const exp = Math.floor(Date.now() / 1000) + 3600;
  return `${part({ alg: "none", typ: "JWT" })}.${
    part({ sub, role: "authenticated", aud: "authenticated", exp })
  }.`;
}

/** A request to an edge function through the gateway. */
export function callFunction(
  name: string,
  init: RequestInit & { path?: string } = {},
): Promise<Response> {
  return fetch(`${SUPABASE_URL}/functions/v1/${name}${init.path ?? ""}`, init);
}

/** The JSON body of a response that must have `status`. */
export async function expectStatus<T = Record<string, unknown>>(
  response: Response,
  status: number,
): Promise<T> {
  const text = await response.text();
  if (response.status !== status) {
    throw new Error(`expected HTTP ${status}, got ${response.status}: ${text}`);
  }
  return JSON.parse(text);
}

/** An RPC as the service role, straight through PostgREST (the test's own setup). */
export async function serviceRpc<F extends RpcName>(
  name: F,
  ...args: [RpcArgs<F>] extends [never] ? [] : [RpcArgs<F>]
): Promise<RpcResult<F>> {
  const response = await fetch(`${SUPABASE_URL}/rest/v1/rpc/${name}`, {
    method: "POST",
    headers: {
      apikey: SERVICE_KEY,
      Authorization: `Bearer ${SERVICE_KEY}`,
      "Content-Type": "application/json",
    },
    body: JSON.stringify(args[0] ?? {}),
  });
  return expectStatus<RpcResult<F>>(response, 200);
}

/** Rows of a table as the service role reads them (`query`: PostgREST's filters). */
export async function serviceSelect<T>(table: string, query: string): Promise<T[]> {
  const response = await fetch(`${SUPABASE_URL}/rest/v1/${table}?${query}`, {
    headers: { apikey: SERVICE_KEY, Authorization: `Bearer ${SERVICE_KEY}` },
  });
  return expectStatus<T[]>(response, 200);
}

/** A user's journal, oldest first, as the service role reads it. */
export function journal(userId: string): Promise<TableRow<"credit_transactions">[]> {
  return serviceSelect("credit_transactions", `user_id=eq.${userId}&order=seq`);
}

/** Every ledger row of a user, to prove that a refused request wrote nothing. */
export async function ledgerRows(userId: string): Promise<Record<string, Json[]>> {
  const accounts = await serviceSelect<TableRow<"credit_accounts">>(
    "credit_accounts",
    `user_id=eq.${userId}`,
  );
  const accountIds = accounts.map((account) => account.id).join(",");
  return {
    accounts,
    transactions: await journal(userId),
    grants: await serviceSelect("credit_grants", `user_id=eq.${userId}&order=id`),
    reservations: await serviceSelect("credit_reservations", `user_id=eq.${userId}&order=id`),
    keys: await serviceSelect(
      "credit_idempotency_keys",
      `account_id=in.(${accountIds})&order=idempotency_key`,
    ),
  };
}

/** credit_verify_ledger(): every broken invariant of the whole ledger (none, or a bug). */
export function ledgerIssues(): Promise<RpcResult<"credit_verify_ledger">> {
  return serviceRpc("credit_verify_ledger", {});
}
