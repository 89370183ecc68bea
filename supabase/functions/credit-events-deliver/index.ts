// credit-events-deliver: POSTs the due deliveries of the events outbox to their endpoints,
// signed, and reports each to the ledger (docs/events.md). Run it on a schedule (pg_cron
// with pg_net, or any scheduler) with a secret key or the service-role key:
//
//   POST /functions/v1/credit-events-deliver        (no JWT: verify_jwt = false)
//   apikey: <secret key>                             or Authorization: Bearer <service role>
//   {"batch_size": 50, "timeout_ms": 10000}          (both optional)
//
// Answers {claimed, delivered, failed, errors}. The same RPCs as `ducto events deliver`:
// credit_claim_event_deliveries claims due rows (FOR UPDATE SKIP LOCKED, leased, so
// concurrent runs never take the same row), each is POSTed with the header
// `ducto-signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, and
// credit_finish_event_delivery marks it delivered (a 2xx answer) or failed (anything
// else, a timeout, a refused connection), due again after the receiver's Retry-After or
// the ledger's backoff. The caller's credential goes on to the API as is: only the
// service role may claim, so nobody else can make the function deliver.

import { callerCredential, HttpError, json, jsonObject, serve, unwrap } from "../_shared/http.ts";
import { credentialClient } from "../_shared/supabase.ts";
import type { Database } from "../_shared/database.types.ts";

type Claim = Database["public"]["CompositeTypes"]["credit_event_delivery_claim"];

const LEASE_SECONDS = 60;
const MAX_BATCHES = 20;
const encoder = new TextEncoder();

function hex(bytes: ArrayBuffer): string {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The `ducto-signature` header of `body` signed with `secret` at `timestamp`. */
export async function signature(secret: string, body: string, timestamp: number): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const signed = await crypto.subtle.sign("HMAC", key, encoder.encode(`${timestamp}.${body}`));
  return `t=${timestamp},v1=${hex(signed)}`;
}

type Outcome = { delivered: boolean; error: string | null; retryAfter: number | null };

/** One attempt: delivered on a 2xx answer within the timeout, failed otherwise. */
async function post(claim: Claim, timeoutMs: number): Promise<Outcome> {
  const headers = {
    "content-type": "application/json",
    "ducto-signature": await signature(claim.secret, claim.body, Math.floor(Date.now() / 1000)),
    "ducto-event-id": claim.event_id,
    "ducto-delivery-attempt": String(claim.attempt),
    "user-agent": "ducto-events",
  };
  try {
    const response = await fetch(claim.url, {
      method: "POST",
      headers,
      body: claim.body,
      signal: AbortSignal.timeout(timeoutMs),
    });
    await response.body?.cancel();
    if (response.ok) return { delivered: true, error: null, retryAfter: null };
    const retry = response.headers.get("retry-after") ?? "";
    return {
      delivered: false,
      error: `HTTP ${response.status}`,
      retryAfter: /^[0-9]{1,5}$/.test(retry) ? Math.min(Number(retry), 86400) : null,
    };
  } catch (error) {
    const name = error instanceof Error ? error.name : "Error";
    return { delivered: false, error: `${name}: ${String(error)}`.slice(0, 500), retryAfter: null };
  }
}

function option(body: Record<string, unknown>, name: string, fallback: number, max: number) {
  const value = body[name] ?? fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > max) {
    throw new HttpError(400, "invalid_request", `${name} must be a whole number from 1 to ${max}`);
  }
  return value;
}

async function deliver(req: Request): Promise<Response> {
  const client = credentialClient(callerCredential(req));
  const body = req.headers.get("content-length") === "0" ? {} : await jsonObject(req);
  const batchSize = option(body, "batch_size", 50, 1000);
  // shorter than the lease, so a claim is reported while it is still this run's
  const timeoutMs = option(body, "timeout_ms", 10000, (LEASE_SECONDS - 1) * 1000);
  let claimed = 0;
  let delivered = 0;
  const errors: string[] = [];
  for (let batch = 0; batch < MAX_BATCHES; batch++) {
    const claims = unwrap(
      await client.rpc("credit_claim_event_deliveries", {
        p_limit: batchSize,
        p_lease_seconds: LEASE_SECONDS,
      }),
    );
    const outcomes = await Promise.all(claims.map((claim) => post(claim, timeoutMs)));
    for (const [i, outcome] of outcomes.entries()) {
      unwrap(
        await client.rpc("credit_finish_event_delivery", {
          p_claim_id: claims[i].claim_id,
          p_delivered: outcome.delivered,
          p_error: outcome.error ?? undefined,
          p_retry_after_seconds: outcome.retryAfter ?? undefined,
        }),
      );
      if (outcome.delivered) delivered++;
      else errors.push(`${claims[i].event_id} -> ${claims[i].url}: ${outcome.error}`);
    }
    claimed += claims.length;
    if (claims.length < batchSize) break;
  }
  return json({ claimed, delivered, failed: claimed - delivered, errors });
}

export default { fetch: serve("POST", deliver) } satisfies Deno.ServeDefaultExport;
