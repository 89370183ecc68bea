// The Stripe webhook of ducto: verifies the delivery's signature (webhook-signature.ts) and
// routes each event ducto handles to the one RPC that applies it. Every RPC is keyed by
// Stripe's own ids, so a redelivered, duplicated or reordered event changes nothing.
// docs/stripe.md lists the events; any other is acknowledged and ignored.

import { HttpError, json, unwrap } from "./http.ts";
import type { Json } from "./database.types.ts";
import { serviceClient, setting } from "./supabase.ts";
import { verifySignature } from "./webhook-signature.ts";

type JsonObject = { [key: string]: Json | undefined };

function objectOf(value: Json | undefined): JsonObject | null {
  return value && typeof value === "object" && !Array.isArray(value) ? value : null;
}

function stringOf(value: Json | undefined): string | null {
  return typeof value === "string" && value ? value : null;
}

/** The id of an expandable field: Stripe sends an id, or the object when expanded. */
function idOf(value: Json | undefined): string | null {
  return stringOf(value) ?? stringOf(objectOf(value)?.id);
}

function invalidEvent(message: string): never {
  throw new HttpError(400, "invalid_event", message);
}

const USER_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A Supabase user id (a UUID) in the form auth.uid() has as text, or null when absent. */
function userIdOf(value: Json | undefined, where: string): string | null {
  if (value === undefined || value === null || value === "") return null;
  // credits for anything else would land in an account no signed-in user can ever read
  if (typeof value !== "string" || !USER_ID.test(value)) {
    invalidEvent(`${where} must be a Supabase user id (a UUID), got ${JSON.stringify(value)}`);
  }
  return value.toLowerCase();
}

/** A whole amount of money (the currency's smallest unit) or credits. */
function wholeOf(value: Json | undefined, where: string): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    invalidEvent(`${where} must be a whole number, got ${JSON.stringify(value)}`);
  }
  return value;
}

const NOT_HANDLED = { received: true, credited: false };

// ---------------------------------------------------------------- checkout top-up

const PAID_CHECKOUTS = new Set([
  "checkout.session.completed",
  "checkout.session.async_payment_succeeded",
]);

// A Stripe Checkout Session is a credit purchase when the product created it with
// `client_reference_id` = the user id and `metadata.credits` = the credits bought. Once
// paid, its credits are added as a `purchase` keyed by the session id (one session is one
// payment: every announcement after the first is a replay), and its payment intent is
// recorded so that a refund or dispute, which names it, finds the purchase.
async function checkoutPaid(session: JsonObject): Promise<Response> {
  // a completed checkout of a delayed payment method is paid later (async_payment_succeeded)
  if (session.payment_status !== "paid") return json(NOT_HANDLED);
  const credits = objectOf(session.metadata)?.credits;
  if (credits === undefined) return json(NOT_HANDLED); // not a credit purchase
  if (typeof credits !== "string" || !/^[1-9][0-9]{0,15}$/.test(credits)) {
    invalidEvent(`metadata.credits must be a positive whole number, got "${credits}"`);
  }
  const reference = session.client_reference_id;
  if (typeof reference !== "string" || !reference) {
    invalidEvent("the checkout session has no client_reference_id (the user id)");
  }
  const userId = userIdOf(reference, "client_reference_id")!;
  const sessionId = stringOf(session.id);
  if (!sessionId) invalidEvent("the checkout session has no id");
  const paymentIntent = idOf(session.payment_intent);
  const amountTotal = typeof session.amount_total === "number" ? session.amount_total : null;
  const added = unwrap(
    await serviceClient().rpc("credit_stripe_record_purchase", {
      p_user_id: userId,
      p_credits: Number(credits),
      // The payment, not the event: Stripe may announce one paid session by two events
      // (completed, then async_payment_succeeded) and redeliver each; all but the first
      // return the first result and add nothing.
      p_checkout_session_id: sessionId,
      // null when the session has no payment (a free checkout): nothing to claw back
      p_payment_intent_id: paymentIntent as string,
      p_amount_total: amountTotal as number,
      // Only what every event announcing the session carries alike (not the event's id or
      // type): the key's replay compares the whole request, metadata included.
      p_metadata: {
        source: "stripe",
        checkout_session_id: sessionId,
        payment_intent: paymentIntent,
        amount_total: amountTotal,
        currency: session.currency ?? null,
      },
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

// ---------------------------------------------------------------- refunds and disputes

// charge.refunded: the charge's amount_refunded is cumulative; the ledger claws back in
// proportion to the largest seen.
async function chargeRefunded(charge: JsonObject): Promise<Response> {
  const paymentIntent = idOf(charge.payment_intent);
  if (!paymentIntent) return json(NOT_HANDLED); // a charge without a payment intent buys no credits
  const result = unwrap(
    await serviceClient().rpc("credit_stripe_charge_refunded", {
      p_payment_intent_id: paymentIntent,
      p_amount_refunded: wholeOf(charge.amount_refunded, "amount_refunded"),
    }),
  );
  return json({ received: true, handled: "refund", ...result });
}

async function disputeFunds(dispute: JsonObject, funds: "withdrawn" | "reinstated") {
  const paymentIntent = idOf(dispute.payment_intent);
  const disputeId = stringOf(dispute.id);
  if (!disputeId) invalidEvent("the dispute has no id");
  if (!paymentIntent) return json(NOT_HANDLED);
  const result = unwrap(
    await serviceClient().rpc("credit_stripe_dispute", {
      p_dispute_id: disputeId,
      p_payment_intent_id: paymentIntent,
      p_amount: wholeOf(dispute.amount, "amount"),
      p_funds: funds,
    }),
  );
  return json({ received: true, handled: "dispute", ...result });
}

// ---------------------------------------------------------------- subscriptions

/**
 * The first of `prices` mapped to a plan (credit_set_price_plan), else the first: a
 * subscription or invoice may carry several prices (a base fee and a metered one), of
 * which one sells the plan.
 */
async function planPrice(prices: string[]): Promise<string | null> {
  if (prices.length <= 1) return prices[0] ?? null;
  const mapped = unwrap(
    await serviceClient().from("credit_stripe_prices").select("price_id").in("price_id", prices),
  ).map((row) => row.price_id);
  return prices.find((price) => mapped.includes(price)) ?? prices[0];
}

/** The user id a subscription's creator put in its metadata (docs/stripe.md). */
function subscriptionUser(metadata: Json | undefined): string | null {
  return userIdOf(objectOf(metadata)?.user_id, "metadata.user_id");
}

async function subscriptionChanged(event: JsonObject, subscription: JsonObject) {
  const items = objectOf(subscription.items)?.data;
  // an item's `price`, or its `plan` in events of API versions before Prices: a plan's id
  // is a price id (Stripe accepts it wherever a price id goes)
  const prices = (Array.isArray(items) ? items : [])
    .map((item) =>
      idOf(objectOf(objectOf(item)?.price)?.id) ?? idOf(objectOf(objectOf(item)?.plan)?.id)
    )
    .filter((price): price is string => price !== null);
  const subscriptionId = stringOf(subscription.id);
  const customer = idOf(subscription.customer);
  if (!subscriptionId || !customer) invalidEvent("the subscription has no id or customer");
  const result = unwrap(
    await serviceClient().rpc("credit_stripe_subscription_changed", {
      p_subscription_id: subscriptionId,
      p_customer_id: customer,
      p_price_id: (await planPrice(prices)) as string, // null: no plan to assign
      p_status: String(subscription.status),
      p_event_created: new Date(wholeOf(event.created, "created") * 1000).toISOString(),
      p_user_id: subscriptionUser(subscription.metadata) ?? undefined,
    }),
  );
  return json({ received: true, handled: "subscription", ...result });
}

/** The invoice's subscription lines: each price and the end of the period it pays for. */
function subscriptionLines(invoice: JsonObject): Map<string, number | null> {
  const found = new Map<string, number | null>();
  const lines = objectOf(invoice.lines)?.data;
  for (const line of Array.isArray(lines) ? lines : []) {
    const item = objectOf(line);
    if (!item || item.proration === true) continue;
    // the price: `price` (API versions before 2025-03-31) or `pricing.price_details.price`
    const price = idOf(objectOf(item.price)?.id) ??
      idOf(objectOf(objectOf(item.pricing)?.price_details)?.price);
    const end = objectOf(item.period)?.end;
    if (price && !found.has(price)) found.set(price, typeof end === "number" ? end : null);
  }
  return found;
}

async function invoicePaid(invoice: JsonObject): Promise<Response> {
  // the subscription and its metadata: `parent.subscription_details` (API versions from
  // 2025-03-31) or the invoice's own `subscription` and `subscription_details`
  const details = objectOf(objectOf(invoice.parent)?.subscription_details) ??
    objectOf(invoice.subscription_details);
  const subscription = idOf(details?.subscription) ?? idOf(invoice.subscription);
  const lines = subscriptionLines(invoice);
  const price = await planPrice([...lines.keys()]);
  if (!subscription || !price) return json(NOT_HANDLED); // not a subscription's invoice
  const periodEnd = lines.get(price) ?? null;
  const invoiceId = stringOf(invoice.id);
  const customer = idOf(invoice.customer);
  if (!invoiceId || !customer) invalidEvent("the invoice has no id or customer");
  const result = unwrap(
    await serviceClient().rpc("credit_stripe_invoice_paid", {
      p_invoice_id: invoiceId,
      p_customer_id: customer,
      p_subscription_id: subscription,
      p_price_id: price,
      p_billing_reason: String(invoice.billing_reason ?? ""),
      p_period_end: new Date((periodEnd ?? 0) * 1000).toISOString(),
      p_user_id: subscriptionUser(details?.metadata) ?? undefined,
    }),
  );
  return json({ received: true, handled: "invoice", ...result });
}

// ---------------------------------------------------------------- automatic top-up

const TOPUP_STATUS: Record<string, string> = {
  "payment_intent.succeeded": "succeeded",
  "payment_intent.payment_failed": "failed",
  "payment_intent.requires_action": "requires_action",
};

// A payment intent the automatic top-up created carries its request's id in
// metadata.ducto_topup_request_id; credit_complete_topup applies the outcome.
async function topupOutcome(type: string, intent: JsonObject): Promise<Response> {
  const request = stringOf(objectOf(intent.metadata)?.ducto_topup_request_id);
  if (!request) return json(NOT_HANDLED); // a payment ducto did not start
  const result = unwrap(
    await serviceClient().rpc("credit_complete_topup", {
      p_request_id: request,
      p_payment_intent_id: stringOf(intent.id) ?? "",
      p_status: TOPUP_STATUS[type],
      p_error: stringOf(objectOf(intent.last_payment_error)?.message) ?? undefined,
    }),
  );
  return json({ received: true, handled: "topup", result });
}

// ---------------------------------------------------------------- the webhook

/** Verifies a delivery and applies its event. */
export async function stripeWebhook(req: Request): Promise<Response> {
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
  const type = String(event.type);
  const object = objectOf(objectOf(event.data)?.object);
  if (!object) return json(NOT_HANDLED);
  if (PAID_CHECKOUTS.has(type)) return checkoutPaid(object);
  switch (type) {
    case "charge.refunded":
      return chargeRefunded(object);
    case "charge.dispute.funds_withdrawn":
      return disputeFunds(object, "withdrawn");
    case "charge.dispute.funds_reinstated":
      return disputeFunds(object, "reinstated");
    case "customer.subscription.created":
    case "customer.subscription.updated":
    case "customer.subscription.deleted":
      return subscriptionChanged(event, object);
    case "invoice.paid":
      return invoicePaid(object);
  }
  if (type in TOPUP_STATUS) return topupOutcome(type, object);
  return json(NOT_HANDLED);
}
