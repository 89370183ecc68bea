// The ways an edge function reaches the ledger's RPCs through the project's API, with the
// settings Supabase gives every function (SUPABASE_URL, SUPABASE_ANON_KEY,
// SUPABASE_SERVICE_ROLE_KEY).

import { createClient, type SupabaseClient } from "npm:@supabase/supabase-js@2.109.0";
import type { Database } from "./database.types.ts";
import type { Credential } from "./http.ts";

export type Client = SupabaseClient<Database>;

/** A setting the function cannot run without. */
export function setting(name: string): string {
  const value = Deno.env.get(name);
  if (!value) throw new Error(`${name} is not set: see docs/edge-functions.md`);
  return value;
}

// A function serves one request per client: no session to keep or refresh.
const AUTH = { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false };

/**
 * Acts as the caller: their `Authorization` header goes to PostgREST, which verifies the
 * token, so the database's grants and row-level security decide what they may do.
 */
export function callerClient(authorization: string): Client {
  return createClient<Database>(setting("SUPABASE_URL"), setting("SUPABASE_ANON_KEY"), {
    auth: AUTH,
    global: { headers: { Authorization: authorization } },
  });
}

/**
 * Acts as whatever the caller's credential stands for: a bearer token as the caller
 * (callerClient); an API key as the gateway runs it (a secret key as the service role, a
 * publishable key as anon, a key it never issued refused with 401).
 */
export function credentialClient(credential: Credential): Client {
  if (credential.kind === "bearer") return callerClient(credential.authorization);
  // supabase-js sends the key as apikey and as the bearer token: the same value in both
  return createClient<Database>(setting("SUPABASE_URL"), credential.apikey, { auth: AUTH });
}

/** Acts as the service role: only for a caller the function has authenticated itself. */
export function serviceClient(): Client {
  return createClient<Database>(setting("SUPABASE_URL"), setting("SUPABASE_SERVICE_ROLE_KEY"), {
    auth: AUTH,
  });
}
