// credit-stripe-webhook against the stack: refunds, disputes and subscriptions as Stripe
// documents their events, signed by Stripe's own library. The checkout route is the one
// credit-topup-webhook.test.ts proves (the same code); here it is the purchase that later
// events claw back. An automatic top-up's payment intent (metadata.ducto_topup_request_id)
// reported by the webhook before or after the worker credits once.

import assert from "node:assert/strict";
import Stripe from "npm:stripe@23.1.0";
import {
  callFunction,
  expectStatus,
  journal,
  ledgerIssues,
  newUserId,
  serviceRpc,
  serviceSelect,
  stackEnv,
} from "./helpers.ts";

const SECRET = stackEnv("STRIPE_WEBHOOK_SECRET");
const cryptoProvider = Stripe.createSubtleCryptoProvider();

type Body = Record<string, unknown>;

const stripeId = (prefix: string) => `${prefix}_${crypto.randomUUID().replaceAll("-", "")}`;
const unix = (date: Date) => Math.floor(date.getTime() / 1000);

function event(type: string, object: Body, created = unix(new Date())) {
  return {
    id: stripeId("evt"),
    object: "event",
    api_version: "2025-03-31.basil",
    created,
    type,
    data: { object },
  };
}

async function deliver(payload: unknown, fn = "credit-stripe-webhook"): Promise<Response> {
  const body = JSON.stringify(payload);
  const signature = await Stripe.webhooks.generateTestHeaderStringAsync({
    payload: body,
    secret: SECRET,
    timestamp: Math.floor(Date.now() / 1000),
    cryptoProvider,
  });
  return callFunction(fn, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Stripe-Signature": signature },
    body,
  });
}

async function ok(payload: unknown, fn?: string): Promise<Body> {
  return expectStatus<Body>(await deliver(payload, fn), 200);
}

/** A paid checkout of `credits` for `cents`; its payment intent. */
async function buy(user: string, credits: number, cents: number): Promise<string> {
  const paymentIntent = stripeId("pi");
  const body = await ok(event("checkout.session.completed", {
    id: stripeId("cs_test"),
    object: "checkout.session",
    client_reference_id: user,
    payment_status: "paid",
    payment_intent: paymentIntent,
    amount_total: cents,
    currency: "usd",
    metadata: { credits: String(credits) },
  }));
  assert.equal(body.credited, true);
  return paymentIntent;
}

function charge(paymentIntent: string, amount: number, refunded: number): Body {
  return {
    id: stripeId("ch"),
    object: "charge",
    amount,
    amount_refunded: refunded,
    refunded: refunded === amount,
    payment_intent: paymentIntent,
    currency: "usd",
  };
}

function dispute(id: string, paymentIntent: string, amount: number, status: string): Body {
  return {
    id,
    object: "dispute",
    amount,
    charge: stripeId("ch"),
    payment_intent: paymentIntent,
    currency: "usd",
    status,
    reason: "fraudulent",
  };
}

async function balance(user: string): Promise<number> {
  return (await serviceRpc("credit_get_balance", { p_user_id: user })).balance;
}

Deno.test("buy 100, spend 80, refunds of 30% then 100%: balance -80, all of it debt", async () => {
  const user = newUserId();
  const paymentIntent = await buy(user, 100, 1000);
  await serviceRpc("credit_deduct_credits", { p_user_id: user, p_amount: 80 });

  const partial = event("charge.refunded", charge(paymentIntent, 1000, 300));
  const first = await ok(partial);
  assert.equal(first.change, 30);
  assert.equal((await ok(partial)).change, 0, "a redelivery changes nothing");
  assert.equal(await balance(user), -10);

  const full = await ok(event("charge.refunded", charge(paymentIntent, 1000, 1000)));
  assert.equal(full.change, 70);
  assert.equal(full.balance_after, -80);
  assert.equal(full.debt, 80);
  assert.equal(await balance(user), -80);
  assert.deepEqual(
    (await journal(user)).map((row) => [row.type, row.amount]),
    [["purchase", 100], ["usage", -80], ["void", -30], ["void", -70]],
  );
  assert.deepEqual(await ledgerIssues(), []);
});

Deno.test("a dispute withdrawn then reinstated nets to zero; a late withdrawal changes nothing", async () => {
  const user = newUserId();
  const paymentIntent = await buy(user, 100, 1000);
  await serviceRpc("credit_deduct_credits", { p_user_id: user, p_amount: 30 });
  const id = stripeId("du");

  const withdrawn = event(
    "charge.dispute.funds_withdrawn",
    dispute(id, paymentIntent, 500, "needs_response"),
  );
  assert.equal((await ok(withdrawn)).change, 50);
  assert.equal(await balance(user), 20);
  const reinstated = event(
    "charge.dispute.funds_reinstated",
    dispute(id, paymentIntent, 500, "won"),
  );
  assert.equal((await ok(reinstated)).change, -50);
  assert.equal(await balance(user), 70);
  assert.equal((await ok(withdrawn)).change, 0, "reinstated is final");
  assert.equal((await ok(reinstated)).change, 0);
  assert.equal(await balance(user), 70);
  assert.deepEqual(await ledgerIssues(), []);
});

Deno.test("a refund of a payment that bought no credits is acknowledged", async () => {
  const body = await ok(event("charge.refunded", charge(stripeId("pi"), 500, 500)));
  assert.equal(body.known, false);
  assert.equal(body.change, 0);
});

Deno.test("the old endpoint is the same webhook: a refund through credit-topup-webhook", async () => {
  const user = newUserId();
  const paymentIntent = await buy(user, 40, 400);
  const body = await ok(
    event("charge.refunded", charge(paymentIntent, 400, 400)),
    "credit-topup-webhook",
  );
  assert.equal(body.change, 40);
  assert.equal(await balance(user), 0);
});

Deno.test("a subscription assigns its plan; each period's paid invoice grants the allowance once", async () => {
  const user = newUserId();
  const plan = `sub-${crypto.randomUUID().slice(0, 8)}`;
  const price = stripeId("price");
  const customer = stripeId("cus");
  const subscriptionId = stripeId("sub");
  await serviceRpc("credit_upsert_plan", {
    p_plan_id: plan,
    p_name: "Pro",
    p_allowance: 500,
    p_allowance_period: "month",
  });
  await serviceRpc("credit_set_price_plan", { p_price_id: price, p_plan_id: plan });
  const start = new Date();
  const end = new Date(start.getTime() + 30 * 86400_000);
  const subscription = (status: string) => ({
    id: subscriptionId,
    object: "subscription",
    customer,
    status,
    metadata: { user_id: user },
    items: {
      object: "list",
      data: [{
        id: stripeId("si"),
        object: "subscription_item",
        price: { id: price, object: "price" },
        current_period_start: unix(start),
        current_period_end: unix(end),
      }],
    },
  });
  // Stripe's invoice of API 2025-03-31: the subscription under parent, the price under
  // pricing.price_details
  const invoice = (reason: string, periodEnd: Date, proration = false) => ({
    id: stripeId("in"),
    object: "invoice",
    customer,
    billing_reason: reason,
    status: "paid",
    parent: {
      type: "subscription_details",
      subscription_details: { subscription: subscriptionId, metadata: { user_id: user } },
    },
    lines: {
      object: "list",
      data: [{
        id: stripeId("il"),
        object: "line_item",
        amount: 2000,
        proration,
        period: { start: unix(start), end: unix(periodEnd) },
        pricing: { type: "price_details", price_details: { price, product: stripeId("prod") } },
      }],
    },
  });

  const created = await ok(event("customer.subscription.created", subscription("active")));
  assert.equal(created.plan_id, plan);
  assert.equal((await serviceRpc("credit_get_user_plan", { p_user_id: user })).plan_id, plan);

  const first = invoice("subscription_create", end);
  const granted = await ok(event("invoice.paid", first));
  assert.equal(granted.outcome, "granted");
  assert.equal(granted.granted, 500);
  assert.equal((await ok(event("invoice.paid", first))).outcome, "replay");
  // an upgrade's proration invoice does not reset the allowance
  const update = await ok(event("invoice.paid", invoice("subscription_update", end, true)));
  assert.equal(update.credited, false);
  assert.equal(
    (await ok(event("invoice.paid", invoice("subscription_update", end)))).outcome,
    "not_a_period",
  );
  const grants = await serviceSelect<{ amount: number; expires_at: string }>(
    "credit_grants",
    `user_id=eq.${user}`,
  );
  assert.deepEqual(
    grants.map((g) => [g.amount, new Date(g.expires_at).getTime()]),
    [[500, unix(end) * 1000]],
  );
  assert.equal(await balance(user), 500);

  // an older event arriving late is ignored; deletion removes the plan
  const stale = await ok(
    event("customer.subscription.updated", subscription("past_due"), unix(start) - 60),
  );
  assert.equal(stale.applied, false);
  const deleted = await ok(
    event("customer.subscription.deleted", subscription("canceled"), unix(start) + 1),
  );
  assert.equal(deleted.applied, true);
  assert.equal((await serviceRpc("credit_get_user_plan", { p_user_id: user })).plan_id, null);
  const late = await ok(event("invoice.paid", invoice("subscription_cycle", end)));
  assert.equal(late.outcome, "subscription_canceled");
  assert.equal(await balance(user), 500, "credits already granted stay until their period ends");
  assert.deepEqual(await ledgerIssues(), []);
});

Deno.test("an invoice of a customer no user is known for is refused, for Stripe to retry", async () => {
  const price = stripeId("price");
  const plan = `sub-${crypto.randomUUID().slice(0, 8)}`;
  await serviceRpc("credit_upsert_plan", {
    p_plan_id: plan,
    p_name: "Pro",
    p_allowance: 5,
    p_allowance_period: "month",
  });
  await serviceRpc("credit_set_price_plan", { p_price_id: price, p_plan_id: plan });
  const response = await deliver(event("invoice.paid", {
    id: stripeId("in"),
    object: "invoice",
    customer: stripeId("cus"),
    billing_reason: "subscription_create",
    subscription: stripeId("sub"),
    lines: { data: [{ price: { id: price }, period: { end: unix(new Date()) + 86400 } }] },
  }));
  const error = await expectStatus<Body>(response, 404);
  assert.equal(error.code, "DC122");
});

Deno.test("a forged or stale refund changes nothing; a rotated secret next to the current one is accepted", async () => {
  const user = newUserId();
  const paymentIntent = await buy(user, 10, 100);
  const payload = JSON.stringify(event("charge.refunded", charge(paymentIntent, 100, 100)));
  const sign = (secret: string, at: number) =>
    Stripe.webhooks.generateTestHeaderStringAsync({
      payload,
      secret,
      timestamp: at,
      cryptoProvider,
    });
  const now = Math.floor(Date.now() / 1000);
  const send = (signature: string) =>
    callFunction("credit-stripe-webhook", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Stripe-Signature": signature },
      body: payload,
    });
  const forged = await expectStatus<Body>(await send(await sign("whsec_forged", now)), 400);
  assert.equal(forged.code, "invalid_signature");
  const stale = await expectStatus<Body>(await send(await sign(SECRET, now - 3600)), 400);
  assert.equal(stale.code, "stale_signature");
  assert.equal(await balance(user), 10);
  const old = (await sign("whsec_the_previous_secret", now)).split(",")[1];
  const rotated = await expectStatus<Body>(await send(`${await sign(SECRET, now)},${old}`), 200);
  assert.equal(rotated.change, 10);
  assert.equal(await balance(user), 0);
});

Deno.test("of a subscription's several prices, the one mapped to a plan decides", async () => {
  const user = newUserId();
  const plan = `sub-${crypto.randomUUID().slice(0, 8)}`;
  const metered = stripeId("price");
  const price = stripeId("price");
  const customer = stripeId("cus");
  const subscriptionId = stripeId("sub");
  await serviceRpc("credit_upsert_plan", {
    p_plan_id: plan,
    p_name: "Team",
    p_allowance: 70,
    p_allowance_period: "month",
  });
  await serviceRpc("credit_set_price_plan", { p_price_id: price, p_plan_id: plan });
  const end = unix(new Date()) + 30 * 86400;
  const item = (id: string) => ({ object: "subscription_item", price: { id, object: "price" } });
  const created = await ok(event("customer.subscription.created", {
    id: subscriptionId,
    object: "subscription",
    customer,
    status: "active",
    metadata: { user_id: user },
    items: { object: "list", data: [item(metered), item(price)] },
  }));
  assert.equal(created.plan_id, plan);
  // an invoice of API versions before 2025-03-31: subscription and price on the invoice
  const line = (id: string) => ({ object: "line_item", price: { id }, period: { end } });
  const paid = await ok(event("invoice.paid", {
    id: stripeId("in"),
    object: "invoice",
    customer,
    subscription: subscriptionId,
    billing_reason: "subscription_cycle",
    lines: { object: "list", data: [line(metered), line(price)] },
  }));
  assert.equal(paid.outcome, "granted");
  assert.equal(await balance(user), 70);
});

Deno.test("an auto top-up's payment reported by the webhook credits once, however often", async () => {
  const user = newUserId();
  await serviceRpc("credit_add_credits", { p_user_id: user, p_amount: 600 });
  await serviceRpc("credit_set_auto_topup", {
    p_user_id: user,
    p_threshold: 500,
    p_amount: 1000,
    p_unit_price_minor: 2,
    p_currency: "usd",
    p_stripe_customer_id: stripeId("cus"),
    p_stripe_payment_method_id: stripeId("pm"),
  });
  await serviceRpc("credit_deduct_credits", { p_user_id: user, p_amount: 200 });
  const [request] = await serviceSelect<{ id: string; state: string }>(
    "credit_topup_requests",
    `user_id=eq.${user}&select=id,state`,
  );
  assert.equal(request.state, "pending");
  const intent = {
    id: stripeId("pi"),
    object: "payment_intent",
    amount: 2000,
    currency: "usd",
    status: "succeeded",
    metadata: { ducto_topup_request_id: request.id },
  };
  // the webhook learns of the payment before the worker does, and Stripe redelivers it
  await ok(event("payment_intent.succeeded", intent));
  await ok(event("payment_intent.succeeded", intent));
  const balance = await serviceRpc("credit_get_balance", { p_user_id: user });
  assert.equal(balance.balance, 1400);
  const [done] = await serviceSelect<{ state: string }>(
    "credit_topup_requests",
    `id=eq.${request.id}&select=state`,
  );
  assert.equal(done.state, "succeeded");
  assert.deepEqual(await ledgerIssues(), []);
});
