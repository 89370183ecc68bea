// credit-topup-webhook: adds purchased credits when the payment provider says a
// checkout was paid.
//
//   POST /functions/v1/credit-topup-webhook        (no JWT: verify_jwt = false)
//   Stripe-Signature: t=...,v1=...                  signed with STRIPE_WEBHOOK_SECRET
//
// A Stripe Checkout Session is a credit purchase when the product created it with
// `client_reference_id` = the user id and `metadata.credits` = the credits bought. Its
// `checkout.session.completed` event (once paid) or `checkout.session.async_payment_succeeded`
// adds them with credit_add_credits as a `purchase`, keyed by the checkout session id: one
// session is one payment, so every event that announces it, however often, after the
// first is a replay and adds nothing. Other events are acknowledged and ignored.

import { HttpError, json, serve, unwrap } from "../_shared/http.ts";
import type { Json } from "../_shared/database.types.ts";
import { serviceClient, setting } from "../_shared/supabase.ts";
import { verifySignature } from "../_shared/webhook-signature.ts";

type JsonObject = { [key: string]: Json | undefined };

type Purchase = {
  /** The checkout session id: the key of the purchase's one grant. */
  sessionId: string;
  userId: string;
  credits: number;
  metadata: Json;
};

function objectOf(value: Json | undefined): JsonObject | null {
  return value && typeof value === "object" && !Array.isArray(value) ? value : null;
}

const PAID_EVENTS = new Set([
  "checkout.session.completed",
  "checkout.session.async_payment_succeeded",
]);

const USER_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function invalidEvent(message: string): never {
  throw new HttpError(400, "invalid_event", message);
}

/** The credits a verified event buys, or null when it buys none. */
function purchaseOf(event: JsonObject): Purchase | null {
  const session = objectOf(objectOf(event.data)?.object);
  if (!PAID_EVENTS.has(String(event.type)) || !session) return null;
  // a completed checkout of a delayed payment method is paid later (async_payment_succeeded)
  if (session.payment_status !== "paid") return null;
  const credits = objectOf(session.metadata)?.credits;
  if (credits === undefined) return null; // not a credit purchase
  if (typeof credits !== "string" || !/^[1-9][0-9]{0,15}$/.test(credits)) {
    invalidEvent(`metadata.credits must be a positive whole number, got "${credits}"`);
  }
  const reference = session.client_reference_id;
  if (typeof reference !== "string" || !reference) {
    invalidEvent("the checkout session has no client_reference_id (the user id)");
  }
  // Supabase user ids are UUIDs: credits for anything else would land in an account no
  // signed-in user can ever read.
  if (!USER_ID.test(reference)) {
    invalidEvent(
      `client_reference_id must be a Supabase user id (a UUID), got ${JSON.stringify(reference)}`,
    );
  }
  if (typeof session.id !== "string" || !session.id) {
    invalidEvent("the checkout session has no id");
  }
  return {
    sessionId: session.id,
    // the form auth.uid() has as text, which row-level security compares with
    userId: reference.toLowerCase(),
    credits: Number(credits),
    // Only what every event announcing the session carries alike (not the event's id or
    // type): the key's replay compares the whole request, metadata included, so another
    // announcement of the same payment must send the same one to be answered as a replay.
    metadata: {
      source: "stripe",
      checkout_session_id: session.id,
      payment_intent: typeof session.payment_intent === "string" ? session.payment_intent : null,
      amount_total: session.amount_total ?? null,
      currency: session.currency ?? null,
    },
  };
}

async function topUp(req: Request): Promise<Response> {
  // the signature covers the exact bytes, so read them before anything parses them
  const body = new Uint8Array(await req.arrayBuffer());
  await verifySignature(
    body,
    req.headers.get("Stripe-Signature"),
    setting("STRIPE_WEBHOOK_SECRET"),
    Math.floor(Date.now() / 1000),
  );
  let event: JsonObject | null = null;
  try {
    event = objectOf(JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body)));
  } catch {
    // refused below
  }
  if (!event) invalidEvent("the body is not a JSON object");
  if (typeof event.id !== "string" || !event.id) invalidEvent("the event has no id");
  const purchase = purchaseOf(event);
  if (!purchase) return json({ received: true, credited: false });

  const added = unwrap(
    await serviceClient().rpc("credit_add_credits", {
      p_user_id: purchase.userId,
      p_amount: purchase.credits,
      p_tx_type: "purchase",
      p_category: "paid",
      p_metadata: purchase.metadata,
      // The payment, not the event: Stripe may announce one paid session by two events
      // (completed, then async_payment_succeeded) and redeliver each; all but the first
      // return the first result and add nothing.
      p_idempotency_key: purchase.sessionId,
    }),
  );
  return json({
    received: true,
    credited: !added.is_replay,
    replay: added.is_replay,
    transaction_id: added.transaction_id,
    user_id: added.user_id,
    amount: added.amount,
    balance_after: added.balance_after,
  });
}

export default { fetch: serve("POST", topUp) } satisfies Deno.ServeDefaultExport;
