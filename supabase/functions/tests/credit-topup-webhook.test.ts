// credit-topup-webhook against the stack: events signed by Stripe's own library
// (`Stripe.webhooks.generateTestHeaderStringAsync`), so the function's check is proven
// against the provider's format, not against a copy of itself.

import assert from "node:assert/strict";
import Stripe from "npm:stripe@23.1.0";
import {
  callFunction,
  expectStatus,
  journal,
  ledgerIssues,
  ledgerRows,
  newUserId,
  serviceRpc,
  stackEnv,
} from "./helpers.ts";
import { TOLERANCE_SECONDS } from "../_shared/webhook-signature.ts";

const SECRET = stackEnv("STRIPE_WEBHOOK_SECRET");
const cryptoProvider = Stripe.createSubtleCryptoProvider();

type Session = Record<string, unknown>;

const stripeId = (prefix: string) => `${prefix}_${crypto.randomUUID().replaceAll("-", "")}`;

function checkoutEvent(userId: string | null, credits: unknown, session: Session = {}) {
  return {
    id: stripeId("evt"),
    object: "event",
    type: "checkout.session.completed",
    data: {
      object: {
        id: stripeId("cs_test"),
        object: "checkout.session",
        client_reference_id: userId,
        payment_status: "paid",
        payment_intent: stripeId("pi"),
        amount_total: 1900,
        currency: "usd",
        metadata: credits === undefined ? {} : { credits },
        ...session,
      },
    },
  };
}

/** Another event (its own id) of `type` about the same checkout session as `event`. */
function laterEvent(
  event: ReturnType<typeof checkoutEvent>,
  type: string,
  session: Session = {},
) {
  return {
    ...event,
    id: stripeId("evt"),
    type,
    data: { object: { ...event.data.object, ...session } },
  };
}

function sign(payload: string, { secret = SECRET, at = Date.now() / 1000 } = {}): Promise<string> {
  return Stripe.webhooks.generateTestHeaderStringAsync({
    payload,
    secret,
    timestamp: Math.floor(at),
    cryptoProvider,
  });
}

function deliver(payload: string, signature: string | null): Promise<Response> {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (signature !== null) headers["Stripe-Signature"] = signature;
  return callFunction("credit-topup-webhook", { method: "POST", headers, body: payload });
}

async function deliverSigned(event: unknown): Promise<Response> {
  const payload = JSON.stringify(event);
  return deliver(payload, await sign(payload));
}

Deno.test("a paid checkout adds its credits as a purchase keyed by the session id", async () => {
  const user = newUserId();
  const event = checkoutEvent(user, "500");
  const body = await expectStatus(await deliverSigned(event), 200);
  assert.equal(body.received, true);
  assert.equal(body.credited, true);
  assert.equal(body.replay, false);
  assert.equal(body.amount, 500);
  assert.equal(body.balance_after, 500);

  const rows = await journal(user);
  assert.equal(rows.length, 1);
  assert.equal(rows[0].id, body.transaction_id);
  assert.equal(rows[0].type, "purchase");
  assert.equal(rows[0].amount, 500);
  assert.equal(rows[0].idempotency_key, event.data.object.id);
  assert.deepEqual(rows[0].metadata, {
    source: "stripe",
    checkout_session_id: event.data.object.id,
    payment_intent: event.data.object.payment_intent,
    amount_total: 1900,
    currency: "usd",
  });
  const balance = await serviceRpc("credit_get_balance", { p_user_id: user });
  assert.equal(balance.balance, 500);
});

Deno.test("both events announcing one paid checkout credit it once", async () => {
  const user = newUserId();
  const completed = checkoutEvent(user, "250");
  const succeeded = laterEvent(completed, "checkout.session.async_payment_succeeded");
  const first = await expectStatus(await deliverSigned(completed), 200);
  assert.equal(first.credited, true);
  const before = await ledgerRows(user);

  const second = await expectStatus(await deliverSigned(succeeded), 200);
  assert.equal(second.credited, false);
  assert.equal(second.replay, true);
  assert.equal(second.transaction_id, first.transaction_id);
  assert.equal(second.balance_after, 250);
  assert.deepEqual(await ledgerRows(user), before);
  assert.equal((await serviceRpc("credit_get_balance", { p_user_id: user })).balance, 250);
});

Deno.test("the same session sent again under new event ids is a replay", async () => {
  const user = newUserId();
  const event = checkoutEvent(user, "40");
  const first = await expectStatus(await deliverSigned(event), 200);
  const before = await ledgerRows(user);
  for (const type of ["checkout.session.completed", "checkout.session.async_payment_succeeded"]) {
    const again = await expectStatus(await deliverSigned(laterEvent(event, type)), 200);
    assert.equal(again.replay, true, type);
    assert.equal(again.transaction_id, first.transaction_id);
  }
  assert.deepEqual(await ledgerRows(user), before);
});

Deno.test("an unpaid completed checkout adds nothing; its async success adds once", async () => {
  const user = newUserId();
  const completed = checkoutEvent(user, "60", { payment_status: "unpaid" });
  const pending = await expectStatus(await deliverSigned(completed), 200);
  assert.deepEqual(pending, { received: true, credited: false });
  assert.deepEqual(await journal(user), []);

  const succeeded = laterEvent(completed, "checkout.session.async_payment_succeeded", {
    payment_status: "paid",
  });
  const paid = await expectStatus(await deliverSigned(succeeded), 200);
  assert.equal(paid.credited, true);
  assert.equal(paid.amount, 60);
  const before = await ledgerRows(user);

  // Stripe resends the success (its own id again, or a new one), and the completed
  // event may arrive late: none of them adds anything more
  const late = [
    succeeded,
    laterEvent(succeeded, "checkout.session.async_payment_succeeded"),
    completed,
  ];
  for (const event of late) {
    const body = await expectStatus(await deliverSigned(event), 200);
    assert.equal(body.credited, false);
  }
  assert.deepEqual(await ledgerRows(user), before);
  const rows = await journal(user);
  assert.equal(rows.length, 1);
  assert.equal(rows[0].idempotency_key, completed.data.object.id);
});

Deno.test("a redelivered event adds nothing, freshly signed or byte for byte", async () => {
  const user = newUserId();
  const event = checkoutEvent(user, "300");
  const payload = JSON.stringify(event);
  const signature = await sign(payload);
  const first = await expectStatus(await deliver(payload, signature), 200);
  const before = await ledgerRows(user);

  for (const header of [signature, await sign(payload, { at: Date.now() / 1000 + 1 })]) {
    const again = await expectStatus(await deliver(payload, header), 200);
    assert.equal(again.credited, false);
    assert.equal(again.replay, true);
    assert.equal(again.transaction_id, first.transaction_id);
    assert.equal(again.balance_after, 300);
  }
  assert.deepEqual(await ledgerRows(user), before);
});

Deno.test("a tampered, forged, stale or unsigned event adds nothing", async () => {
  const user = newUserId();
  const event = checkoutEvent(user, "100");
  const payload = JSON.stringify(event);
  const signature = await sign(payload);
  const now = Date.now() / 1000;
  const STALE = TOLERANCE_SECONDS + 60;
  const tampered = payload.replace('"credits":"100"', '"credits":"100000"');
  assert.notEqual(tampered, payload);

  const refusals: [string, string | null, string][] = [
    [tampered, signature, "invalid_signature"],
    [payload, await sign(payload, { secret: "whsec_not_the_signing_secret" }), "invalid_signature"],
    // well outside the window: the server reads its clock later than this test did
    [payload, await sign(payload, { at: now - STALE }), "stale_signature"],
    [payload, await sign(payload, { at: now + STALE }), "stale_signature"],
    [payload, null, "invalid_signature"],
    [payload, "", "invalid_signature"],
    [payload, signature.replace(/v1=[0-9a-f]+/, "v1=zz"), "invalid_signature"],
    [payload, signature.replace(/t=[0-9]+,/, ""), "invalid_signature"],
    [payload, `${signature.split(",")[0]},${signature}`, "invalid_signature"],
  ];
  for (const [body, header, code] of refusals) {
    const error = await expectStatus(await deliver(body, header), 400);
    assert.equal(error.code, code, `${header}: ${JSON.stringify(error)}`);
  }
  assert.deepEqual(await ledgerRows(user), {
    accounts: [],
    transactions: [],
    grants: [],
    reservations: [],
    keys: [],
  });
});

Deno.test("a signature by a rotated-out secret next to a valid one is accepted", async () => {
  const user = newUserId();
  const payload = JSON.stringify(checkoutEvent(user, "7"));
  const at = Date.now() / 1000;
  const old = (await sign(payload, { secret: "whsec_the_previous_secret", at })).split(",")[1];
  const body = await expectStatus(
    await deliver(payload, `${await sign(payload, { at })},${old}`),
    200,
  );
  assert.equal(body.credited, true);
});

Deno.test("events that buy no credits are acknowledged and ignored", async () => {
  const user = newUserId();
  const ignored = [
    { ...checkoutEvent(user, "50"), type: "customer.created" },
    checkoutEvent(user, "50", { payment_status: "unpaid" }), // paid later, asynchronously
    checkoutEvent(user, undefined), // a checkout that sells something else
  ];
  for (const event of ignored) {
    const body = await expectStatus(await deliverSigned(event), 200);
    assert.deepEqual(body, { received: true, credited: false });
  }
  assert.deepEqual(await journal(user), []);

  const later = { ...checkoutEvent(user, "50"), type: "checkout.session.async_payment_succeeded" };
  assert.equal((await expectStatus(await deliverSigned(later), 200)).amount, 50);
});

Deno.test("a signed event with a bad purchase is refused and writes nothing", async () => {
  const user = newUserId();
  const bad = [
    checkoutEvent(user, "0"),
    checkoutEvent(user, "-5"),
    checkoutEvent(user, "12.5"),
    checkoutEvent(user, "ten"),
    checkoutEvent(user, 10),
    checkoutEvent(null, "10"),
    checkoutEvent(user, "10", { id: null }), // no session id to key the purchase by
    checkoutEvent(user, "10", { id: "" }),
    { ...checkoutEvent(user, "10"), id: null },
  ];
  for (const event of bad) {
    const error = await expectStatus(await deliverSigned(event), 400);
    assert.equal(error.code, "invalid_event", JSON.stringify(error));
  }
  for (const payload of ["not json", "[1, 2]", "null"]) {
    const error = await expectStatus(await deliver(payload, await sign(payload)), 400);
    assert.equal(error.code, "invalid_event");
  }
  // the amount is the database's to bound: above 2^53 - 1 it is refused there (422)
  const huge = await expectStatus(
    await deliverSigned(checkoutEvent(user, "9007199254740992")),
    422,
  );
  assert.equal(huge.code, "DC001");
  assert.deepEqual(await journal(user), []);
});

Deno.test("a client_reference_id that is not a user id (a UUID) is refused", async () => {
  // ids no other test uses: the shared database may hold rows of a name like "user_abc"
  const suffix = newUserId().slice(0, 8);
  for (const reference of [`user_${suffix}`, `${newUserId()}x`, `team:${newUserId()}`]) {
    const event = checkoutEvent(reference, "10");
    const error = await expectStatus(await deliverSigned(event), 400);
    assert.equal(error.code, "invalid_event");
    assert.match(String(error.message), /client_reference_id must be a Supabase user id/);
    assert.deepEqual(await journal(reference), []);
  }
});

Deno.test("a user id in capitals credits the user's own account", async () => {
  const user = newUserId();
  const body = await expectStatus(await deliverSigned(checkoutEvent(user.toUpperCase(), "7")), 200);
  assert.equal(body.user_id, user);
  assert.equal((await journal(user)).length, 1);
});

Deno.test("only POST is accepted", async () => {
  const response = await callFunction("credit-topup-webhook");
  const error = await expectStatus(response, 405);
  assert.equal(error.code, "method_not_allowed");
  assert.equal(response.headers.get("allow"), "POST, OPTIONS");
});

Deno.test("concurrent deliveries credit each checkout exactly once", async () => {
  const user = newUserId();
  const sessions = Array.from({ length: 8 }, (_, i) => checkoutEvent(user, String(i + 1)));
  // each session announced by both events, each event delivered twice, all at once
  const events = sessions.flatMap((event) => [
    event,
    laterEvent(event, "checkout.session.async_payment_succeeded"),
  ]);
  const signed = await Promise.all(events.map(async (event) => {
    const payload = JSON.stringify(event);
    return { payload, signature: await sign(payload) };
  }));
  const deliveries = signed.flatMap((one) => [one, one]);
  const answers = await Promise.all(
    deliveries.map(async ({ payload, signature }) =>
      expectStatus(await deliver(payload, signature), 200)
    ),
  );
  assert.equal(answers.filter((answer) => answer.credited).length, sessions.length);

  const rows = await journal(user);
  assert.deepEqual(
    rows.map((row) => row.idempotency_key).sort(),
    sessions.map((event) => event.data.object.id).sort(),
  );
  const total = sessions.reduce((sum, _, i) => sum + i + 1, 0);
  assert.equal(rows.at(-1)?.balance_after, total);
  assert.equal((await serviceRpc("credit_get_balance", { p_user_id: user })).balance, total);
  assert.deepEqual(await ledgerIssues(), []);
});
