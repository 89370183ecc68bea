// credit-topup-worker: pays the due auto top-up requests with Stripe and reports each to
// the ledger (docs/stripe.md). Run it on a schedule (pg_cron with pg_net, or any
// scheduler) with a secret key or the service-role key:
//
//   POST /functions/v1/credit-topup-worker          (no JWT: verify_jwt = false)
//   apikey: <secret key>                             or Authorization: Bearer <service role>
//   {"limit": 10, "lease_seconds": 300}              (both optional)
//
// Answers {claimed, succeeded, requires_action, failed, processing, unreachable, errors}.
// The same steps as `ducto topup run`: credit_claim_topup_requests claims due requests
// (FOR UPDATE SKIP LOCKED, leased); for each, a confirmed off-session PaymentIntent is
// created with Stripe's idempotency key = the request id (or the one already recorded is
// read back), its id recorded (credit_record_topup_payment), and its status reported
// (credit_complete_topup), which grants the credits once. When Stripe cannot be reached the
// request is left to its lease and the next run tries it again with the same key. Secrets:
// STRIPE_SECRET_KEY; STRIPE_API_BASE points Stripe's client elsewhere (tests: localstripe).
// Only the service role may claim, so nobody else can make the function pay.

import Stripe from "npm:stripe@23.1.0";
import { callerCredential, HttpError, json, jsonObject, serve, unwrap } from "../_shared/http.ts";
import { credentialClient, setting } from "../_shared/supabase.ts";
import type { Database } from "../_shared/database.types.ts";

type Request_ = Database["public"]["CompositeTypes"]["credit_topup_request_row"];
type Outcome = { intentId: string | null; status: string | null; error: string | null };

/** Stripe's client, at STRIPE_API_BASE when it is set. */
export function stripeClient(): Stripe {
  const base = Deno.env.get("STRIPE_API_BASE");
  const options: Stripe.StripeConfig = {
    httpClient: Stripe.createFetchHttpClient(),
    maxNetworkRetries: 1,
  };
  if (base) {
    const url = new URL(base);
    options.host = url.hostname;
    options.port = url.port || (url.protocol === "http:" ? "80" : "443");
    options.protocol = url.protocol === "http:" ? "http" : "https";
  }
  return new Stripe(setting("STRIPE_SECRET_KEY"), options);
}

/** The payment intent a refused payment made: Stripe names it, or its charge does. */
async function intentOf(stripe: Stripe, error: Stripe.errors.StripeError): Promise<string | null> {
  const raw = error.raw as { payment_intent?: { id?: string }; charge?: string } | undefined;
  if (raw?.payment_intent?.id) return raw.payment_intent.id;
  if (!raw?.charge) return null;
  try {
    const charge = await stripe.charges.retrieve(raw.charge);
    const intent = charge.payment_intent;
    return typeof intent === "string" ? intent : intent?.id ?? null;
  } catch {
    return null;
  }
}

async function pay(stripe: Stripe, request: Request_): Promise<Outcome> {
  try {
    const intent = request.payment_intent_id
      ? await stripe.paymentIntents.retrieve(request.payment_intent_id)
      : await stripe.paymentIntents.create({
        amount: request.amount_minor,
        currency: request.currency,
        customer: request.stripe_customer_id,
        payment_method: request.stripe_payment_method_id,
        off_session: true,
        confirm: true,
        metadata: {
          ducto_topup_request_id: request.id,
          ducto_user_id: request.user_id,
          ducto_credits: String(request.credits),
        },
      }, { idempotencyKey: request.id });
    const error = intent.status === "succeeded" ? null : intent.last_payment_error?.code ?? null;
    return { intentId: intent.id, status: intent.status, error };
  } catch (error) {
    if (error instanceof Stripe.errors.StripeConnectionError) {
      return { intentId: null, status: null, error: null };
    }
    if (error instanceof Stripe.errors.StripeError) {
      const reason = `${error.code ?? error.type}: ${error.message}`.slice(0, 1000);
      return { intentId: await intentOf(stripe, error), status: "failed", error: reason };
    }
    throw error;
  }
}

function option(body: Record<string, unknown>, name: string, fallback: number, max: number) {
  const value = body[name] ?? fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > max) {
    throw new HttpError(400, "invalid_request", `${name} must be a whole number from 1 to ${max}`);
  }
  return value;
}

async function run(req: Request): Promise<Response> {
  const client = credentialClient(callerCredential(req));
  const body = req.headers.get("content-length") === "0" ? {} : await jsonObject(req);
  const limit = option(body, "limit", 10, 1000);
  const leaseSeconds = option(body, "lease_seconds", 300, 3600);
  const requests = unwrap(
    await client.rpc("credit_claim_topup_requests", {
      p_limit: limit,
      p_lease_seconds: leaseSeconds,
    }),
  );
  const counts: Record<string, number> = {};
  const errors: string[] = [];
  const stripe = requests.length ? stripeClient() : null;
  for (const request of requests) {
    const outcome = await pay(stripe!, request);
    if (outcome.intentId && !request.payment_intent_id) {
      // recorded before it is reported: a run after a crash reads it back
      unwrap(
        await client.rpc("credit_record_topup_payment", {
          p_request_id: request.id,
          p_payment_intent_id: outcome.intentId,
        }),
      );
    }
    if (outcome.status === null) {
      counts.unreachable = (counts.unreachable ?? 0) + 1;
      continue;
    }
    const done = unwrap(
      await client.rpc("credit_complete_topup", {
        p_request_id: request.id,
        // null when Stripe refused before making an intent: the ledger takes it for a failure
        p_payment_intent_id: outcome.intentId as string,
        p_status: outcome.status,
        p_error: outcome.error ?? undefined,
      }),
    );
    counts[done.state] = (counts[done.state] ?? 0) + 1;
    if (outcome.error) errors.push(`${request.id}: ${outcome.error}`);
  }
  return json({
    claimed: requests.length,
    succeeded: counts.succeeded ?? 0,
    requires_action: counts.requires_action ?? 0,
    failed: counts.failed ?? 0,
    processing: counts.processing ?? 0,
    unreachable: counts.unreachable ?? 0,
    errors,
  });
}

export default { fetch: serve("POST", run) } satisfies Deno.ServeDefaultExport;
