// credit-topup-worker against the stack and localstripe (STRIPE_API_BASE): the service
// role's run pays a due auto top-up once (the payment intent carries the request id, the
// credits are granted once however often it is reported), a declining card counts a
// failure, and a user or anon cannot make it pay.

import assert from "node:assert/strict";
import Stripe from "npm:stripe@23.1.0";
import {
  ANON_KEY,
  callFunction,
  expectStatus,
  newUserId,
  SECRET_KEY,
  serviceRpc,
  serviceSelect,
  stackEnv,
  userToken,
} from "./helpers.ts";

type Report = {
  claimed: number;
  succeeded: number;
  requires_action: number;
  failed: number;
  processing: number;
  unreachable: number;
  errors: string[];
};

const base = new URL(stackEnv("STRIPE_API_BASE"));
const stripe = new Stripe(stackEnv("STRIPE_SECRET_KEY"), {
  httpClient: Stripe.createFetchHttpClient(),
  host: base.hostname,
  port: base.port,
  protocol: "http",
});

/** A customer with the test card `number` saved (localstripe: 4242... pays, ...0341 is
 * declined when charged). */
async function savedCard(number: string): Promise<[string, string]> {
  const customer = await stripe.customers.create({ email: "topup@example.com" });
  const method = await stripe.paymentMethods.create({
    type: "card",
    card: { number, exp_month: 12, exp_year: 2040, cvc: "123" },
  } as Stripe.PaymentMethodCreateParams);
  await stripe.paymentMethods.attach(method.id, { customer: customer.id });
  return [customer.id, method.id];
}

/** A user of 600 credits with a rule (below 500 buy 1000 at 2 minor units), then 200
 * spent: one request is due. */
async function dueTopup(card: string): Promise<string> {
  const user = newUserId();
  const [customer, method] = await savedCard(card);
  await serviceRpc("credit_add_credits", { p_user_id: user, p_amount: 600 });
  await serviceRpc("credit_set_auto_topup", {
    p_user_id: user,
    p_threshold: 500,
    p_amount: 1000,
    p_unit_price_minor: 2,
    p_currency: "usd",
    p_stripe_customer_id: customer,
    p_stripe_payment_method_id: method,
    p_cooldown_seconds: 0,
  });
  await serviceRpc("credit_deduct_credits", { p_user_id: user, p_amount: 200 });
  return user;
}

function runWorker(credentials: Record<string, string>): Promise<Response> {
  return callFunction("credit-topup-worker", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...credentials },
    body: JSON.stringify({ limit: 1000 }),
  });
}

type RequestRow = { id: string; state: string; payment_intent_id: string | null };

Deno.test("the worker pays a due top-up once, whoever reports it", async () => {
  const user = await dueTopup("4242424242424242");
  const report = await expectStatus<Report>(await runWorker({ apikey: SECRET_KEY }), 200);
  assert.ok(report.succeeded >= 1, JSON.stringify(report));
  const [request] = await serviceSelect<RequestRow>(
    "credit_topup_requests",
    `user_id=eq.${user}&select=id,state,payment_intent_id`,
  );
  assert.equal(request.state, "succeeded");
  const intent = await stripe.paymentIntents.retrieve(request.payment_intent_id!);
  assert.deepEqual(
    [intent.status, intent.amount, intent.metadata.ducto_topup_request_id],
    ["succeeded", 2000, request.id],
  );
  // the webhook reports it again: nothing more is granted
  await serviceRpc("credit_complete_topup", {
    p_request_id: request.id,
    p_payment_intent_id: request.payment_intent_id!,
    p_status: "succeeded",
  });
  const balance = await serviceRpc("credit_get_balance", { p_user_id: user });
  assert.equal(balance.balance, 1400);
});

Deno.test("a declined card counts a failure and writes the retry", async () => {
  const user = await dueTopup("4000000000000341");
  await expectStatus<Report>(await runWorker({ apikey: SECRET_KEY }), 200);
  const requests = await serviceSelect<RequestRow>(
    "credit_topup_requests",
    `user_id=eq.${user}&select=id,state,payment_intent_id&order=created_at`,
  );
  assert.deepEqual(requests.map((r) => r.state), ["failed", "pending"]);
  assert.ok(requests[0].payment_intent_id, "the declined intent is named");
  const rule = await serviceRpc("credit_get_auto_topup", { p_user_id: user });
  assert.deepEqual([rule.enabled, rule.consecutive_failures], [true, 1]);
});

Deno.test("a user or anon cannot make the worker pay", async () => {
  const user = await dueTopup("4242424242424242");
  await expectStatus(await runWorker({ Authorization: `Bearer ${await userToken(user)}` }), 403);
  await expectStatus(await runWorker({ apikey: ANON_KEY }), 401);
  const [request] = await serviceSelect<RequestRow>(
    "credit_topup_requests",
    `user_id=eq.${user}&select=id,state,payment_intent_id`,
  );
  assert.equal(request.state, "pending");
});
