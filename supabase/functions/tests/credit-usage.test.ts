// credit-usage against the stack: the service role (its legacy JWT key or a secret key)
// charges usage priced by the database; users, anon, publishable keys and bad tokens or
// keys charge nothing; malformed bodies write nothing; concurrent charges honour the floor
// and charge each idempotency key once.

import assert from "node:assert/strict";
import usageFunction from "../credit-usage/index.ts";
import {
  ANON_KEY,
  callFunction,
  expectStatus,
  journal,
  ledgerIssues,
  ledgerRows,
  newUserId,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  SERVICE_KEY,
  serviceRpc,
  SUPABASE_URL,
  userToken,
} from "./helpers.ts";

// 1 credit per input token, 2 per output token; the floor keeps 5 credits.
const PRICING = {
  unit: "credits",
  rounding: "ceil",
  min_balance: 5,
  models: [{ model: "deno-test-model", input: 1_000_000, output: 2_000_000 }],
  default: null,
};
const version = (await serviceRpc("credit_publish_pricing", {
  p_config: PRICING,
  p_label: "credit-usage tests",
})).version;

function charge(body: unknown, bearer: string | null = SERVICE_KEY): Promise<Response> {
  return chargeWith(body, bearer ? { Authorization: `Bearer ${bearer}` } : {});
}

/** A charge with these credential headers (`apikey`, `Authorization`). */
function chargeWith(body: unknown, credentials: Record<string, string>): Promise<Response> {
  const headers = { "Content-Type": "application/json", ...credentials };
  const text = typeof body === "string" ? body : JSON.stringify(body);
  return callFunction("credit-usage", { method: "POST", headers, body: text });
}

async function userWith(credits: number): Promise<string> {
  const user = newUserId();
  await serviceRpc("credit_add_credits", { p_user_id: user, p_amount: credits });
  return user;
}

const metrics = (input_tokens: number, output_tokens = 0) => ({
  model: "deno-test-model",
  input_tokens,
  output_tokens,
});

Deno.test("the service role charges usage at the database's price", async () => {
  const user = await userWith(1000);
  const body = await expectStatus(
    await charge({
      user_id: user,
      metrics: metrics(10, 5),
      metadata: { request_id: "r1" },
      idempotency_key: "turn-1",
    }),
    200,
  );
  assert.equal(body.amount, 20);
  assert.equal(body.balance_after, 980);
  assert.equal(body.is_replay, false);

  const [, row] = await journal(user);
  assert.equal(row.id, body.transaction_id);
  assert.equal(row.type, "usage");
  assert.equal(row.amount, -20);
  assert.equal(row.model, "deno-test-model");
  assert.equal(row.pricing_version, version);
  assert.deepEqual(row.metadata, { request_id: "r1" });
  assert.equal(row.idempotency_key, "turn-1");
});

Deno.test("an idempotency key charges once; reused for other usage it is refused", async () => {
  const user = await userWith(1000);
  const request = { user_id: user, metrics: metrics(7), idempotency_key: "call-9" };
  const first = await expectStatus(await charge(request), 200);
  const again = await expectStatus(await charge(request), 200);
  assert.equal(again.is_replay, true);
  assert.equal(again.transaction_id, first.transaction_id);
  const before = await ledgerRows(user);
  const conflict = await expectStatus(await charge({ ...request, metrics: metrics(8) }), 409);
  assert.equal(conflict.code, "DC020");
  assert.deepEqual(await ledgerRows(user), before);
});

Deno.test("users, anon and bad tokens cannot charge", async () => {
  const user = await userWith(100);
  const before = await ledgerRows(user);
  const request = { user_id: user, metrics: metrics(1) };
  const refused: [string | null, number, string][] = [
    [await userToken(user), 403, "42501"], // even charging oneself
    [await userToken(newUserId()), 403, "42501"],
    [ANON_KEY, 401, "42501"],
    [null, 401, "unauthorized"],
    [
      await userToken(user, { secret: "a-forged-secret-of-at-least-32-characters" }),
      401,
      "PGRST301",
    ],
    [await userToken(user, { expiresIn: -60 }), 401, "PGRST301"],
    ["not-a-jwt", 401, "PGRST301"],
  ];
  for (const [bearer, status, code] of refused) {
    const error = await expectStatus(await charge(request, bearer), status);
    assert.equal(error.code, code, JSON.stringify(error));
  }
  // a forged service-role token, past a gateway that did not check it, meets PostgREST
  const forged = await usageFunction.fetch(
    new Request(`${SUPABASE_URL}/credit-usage`, {
      method: "POST",
      headers: { Authorization: `Bearer ${SERVICE_KEY.slice(0, -4)}AAAA` },
      body: JSON.stringify(request),
    }),
  );
  assert.equal((await expectStatus(forged, 401)).code, "PGRST301");
  assert.deepEqual(await ledgerRows(user), before);
});

Deno.test("a secret key (sb_secret_) charges as the service role", async () => {
  const user = await userWith(1000);
  // in apikey alone, or also as the bearer token (supabase-js sends both)
  const shapes: Record<string, string>[] = [
    { apikey: SECRET_KEY },
    { apikey: SECRET_KEY, Authorization: `Bearer ${SECRET_KEY}` },
    { Authorization: `Bearer ${SECRET_KEY}` },
  ];
  for (const [i, credentials] of shapes.entries()) {
    const request = { user_id: user, metrics: metrics(10), idempotency_key: `secret-${i}` };
    const body = await expectStatus(await chargeWith(request, credentials), 200);
    assert.equal(body.amount, 10);
    assert.equal(body.balance_after, 1000 - 10 * (i + 1));
    // a retry with the same key answers the first charge
    const again = await expectStatus(await chargeWith(request, credentials), 200);
    assert.equal(again.is_replay, true);
    assert.equal(again.transaction_id, body.transaction_id);
  }
  const rows = (await journal(user)).filter((row) => row.type === "usage");
  assert.deepEqual(rows.map((row) => row.idempotency_key), ["secret-0", "secret-1", "secret-2"]);
});

Deno.test("publishable, forged and mismatched keys cannot charge", async () => {
  const user = await userWith(100);
  const before = await ledgerRows(user);
  const request = { user_id: user, metrics: metrics(1) };
  const forged = `sb_secret_${crypto.randomUUID().replaceAll("-", "")}`;
  const altered = `${SECRET_KEY.slice(0, -1)}${SECRET_KEY.endsWith("A") ? "B" : "A"}`;
  const refused: [Record<string, string>, number, string][] = [
    // the gateway runs a publishable key as anon, who may not charge
    [{ apikey: PUBLISHABLE_KEY }, 401, "42501"],
    [{ apikey: PUBLISHABLE_KEY, Authorization: `Bearer ${PUBLISHABLE_KEY}` }, 401, "42501"],
    [{ Authorization: `Bearer ${PUBLISHABLE_KEY}` }, 401, "42501"],
    // a secret key the project never issued: the gateway refuses it
    [{ apikey: forged }, 401, "42501"],
    [{ Authorization: `Bearer ${forged}` }, 401, "42501"],
    [{ apikey: altered }, 401, "42501"],
    [{ apikey: "sb_secret_" }, 401, "42501"],
    // a user's token wins over a secret apikey, as at Supabase's gateway
    [{ apikey: SECRET_KEY, Authorization: `Bearer ${await userToken(user)}` }, 403, "42501"],
    // an sb_ bearer token must be the apikey itself
    [{ apikey: PUBLISHABLE_KEY, Authorization: `Bearer ${SECRET_KEY}` }, 401, "unauthorized"],
    [{ apikey: forged, Authorization: `Bearer ${SECRET_KEY}` }, 401, "unauthorized"],
    [{ apikey: SECRET_KEY, Authorization: "Basic c2VjcmV0" }, 401, "unauthorized"],
  ];
  for (const [credentials, status, code] of refused) {
    const error = await expectStatus(await chargeWith(request, credentials), status);
    assert.equal(error.code, code, `${JSON.stringify(credentials)}: ${JSON.stringify(error)}`);
  }
  // a key the project never issued is the gateway's refusal, which its message names
  const gateway = await expectStatus(await chargeWith(request, { apikey: forged }), 401);
  assert.equal(gateway.message, "Invalid API key");
  assert.deepEqual(await ledgerRows(user), before);
});

Deno.test("malformed requests get a clear 4xx and write nothing", async () => {
  const user = await userWith(100);
  const before = await ledgerRows(user);
  const refused: [unknown, number, string][] = [
    ["not json", 400, "invalid_json"],
    ["[]", 400, "invalid_json"],
    ["null", 400, "invalid_json"],
    [{ metrics: metrics(1) }, 400, "invalid_request"],
    [{ user_id: user }, 400, "invalid_request"],
    [{ user_id: 42, metrics: metrics(1) }, 400, "invalid_request"],
    [{ user_id: user, metrics: "model=x" }, 400, "invalid_request"],
    [{ user_id: user, metrics: [metrics(1)] }, 400, "invalid_request"],
    [{ user_id: user, metrics: metrics(1), metadata: "x" }, 400, "invalid_request"],
    [{ user_id: user, metrics: metrics(1), idempotencyKey: "k" }, 400, "invalid_request"],
    [{ user_id: user, metrics: metrics(1), amount: 0 }, 400, "invalid_request"],
    [{ user_id: user, metrics: { ...metrics(1), cost: 0 } }, 422, "DC007"],
    [{ user_id: user, metrics: metrics(-1) }, 422, "DC007"],
    [{ user_id: user, metrics: metrics(1.5) }, 422, "DC007"],
    [{ user_id: user, metrics: { model: "unpriced-model", input_tokens: 1 } }, 422, "DC061"],
    [{ user_id: "", metrics: metrics(1) }, 422, "DC002"],
    [{ user_id: user, metrics: metrics(1), idempotency_key: "" }, 422, "DC004"],
    [{ user_id: user, metrics: metrics(96) }, 402, "DC010"], // 100 - 96 < the floor of 5
  ];
  for (const [body, status, code] of refused) {
    const error = await expectStatus(await charge(body), status);
    assert.equal(error.code, code, `${JSON.stringify(body)}: ${JSON.stringify(error)}`);
  }
  const get = await callFunction("credit-usage", {
    headers: { Authorization: `Bearer ${SERVICE_KEY}` },
  });
  assert.equal((await expectStatus(get, 405)).code, "method_not_allowed");
  assert.deepEqual(await ledgerRows(user), before);
});

Deno.test("concurrent charges honour the floor and charge each key once", async () => {
  const user = await userWith(100);
  // 15 keys of 10 credits each, every one sent twice at once: the floor of 5 admits 9
  const keys = Array.from({ length: 15 }, (_, i) => `job-${i}`);
  const answers = await Promise.all(
    keys.flatMap((key) => [key, key]).map((key) =>
      charge({ user_id: user, metrics: metrics(10), idempotency_key: key })
    ),
  );
  const bodies = await Promise.all(answers.map(async (response) => ({
    status: response.status,
    body: await response.json(),
  })));
  const charged = bodies.filter(({ status, body }) => status === 200 && !body.is_replay);
  const replayed = bodies.filter(({ status, body }) => status === 200 && body.is_replay);
  const refused = bodies.filter(({ status }) => status !== 200);
  // each key: charged then replayed, or refused twice (a refusal does not use the key)
  assert.equal(charged.length, 9);
  assert.equal(replayed.length, 9);
  assert.deepEqual(new Set(refused.map(({ body }) => body.code)), new Set(["DC010"]));

  const rows = (await journal(user)).filter((row) => row.type === "usage");
  assert.equal(rows.length, 9);
  assert.equal(new Set(rows.map((row) => row.idempotency_key)).size, 9);
  const balance = await serviceRpc("credit_get_balance", { p_user_id: user });
  assert.equal(balance.balance, 10);
  assert.deepEqual(await ledgerIssues(), []);
});
