// credit-balance against the stack, with real JWTs: a user reads their own balance and
// journal and nothing else; every wrong, missing, forged or expired token is refused.

import assert from "node:assert/strict";
import balanceFunction from "../credit-balance/index.ts";
import {
  ANON_KEY,
  callFunction,
  expectStatus,
  newUserId,
  SERVICE_KEY,
  serviceRpc,
  SUPABASE_URL,
  unsignedToken,
  userToken,
} from "./helpers.ts";

function getBalance(bearer: string | null, path = ""): Promise<Response> {
  const headers: Record<string, string> = bearer ? { Authorization: `Bearer ${bearer}` } : {};
  return callFunction("credit-balance", { headers, path });
}

/** A user with 100 credits added, 30 spent, 20 held: journal [+100, -30]. */
async function userWithHistory(): Promise<string> {
  const user = newUserId();
  await serviceRpc("credit_add_credits", { p_user_id: user, p_amount: 100, p_tx_type: "grant" });
  await serviceRpc("credit_deduct_credits", {
    p_user_id: user,
    p_amount: 30,
    p_metadata: { feature: "chat" },
  });
  await serviceRpc("credit_reserve_credits", { p_user_id: user, p_amount: 20 });
  return user;
}

Deno.test("a signed-in user reads their balance, plan and newest transactions", async () => {
  const user = await userWithHistory();
  const body = await expectStatus(await getBalance(await userToken(user)), 200);
  assert.deepEqual(
    { ...body, transactions: undefined },
    { user_id: user, balance: 70, held: 20, available: 50, plan: null, transactions: undefined },
  );
  const transactions = body.transactions as Record<string, unknown>[];
  assert.deepEqual(
    transactions.map(({ seq, type, amount, balance_after, metadata }) => ({
      seq,
      type,
      amount,
      balance_after,
      metadata,
    })),
    [
      { seq: 2, type: "usage", amount: -30, balance_after: 70, metadata: { feature: "chat" } },
      { seq: 1, type: "grant", amount: 100, balance_after: 100, metadata: {} },
    ],
  );
  const one = await expectStatus(await getBalance(await userToken(user), "?limit=1"), 200);
  assert.deepEqual((one.transactions as { seq: number }[]).map((row) => row.seq), [2]);
});

Deno.test("a user without an account has a zero balance and no transactions", async () => {
  const user = newUserId();
  const body = await expectStatus(await getBalance(await userToken(user)), 200);
  assert.deepEqual(body, {
    user_id: user,
    balance: 0,
    held: 0,
    available: 0,
    plan: null,
    transactions: [],
  });
});

Deno.test("a user never sees another user's ledger", async () => {
  const owner = await userWithHistory();
  const stranger = newUserId();
  // the stranger's token carries their own id: the function reads only that
  const body = await expectStatus(await getBalance(await userToken(stranger)), 200);
  assert.equal(body.balance, 0);
  assert.deepEqual(body.transactions, []);
  // and the owner's id in other claims changes nothing
  const sneaky = await userToken(stranger, { claims: { user_id: owner, email: owner } });
  assert.equal((await expectStatus(await getBalance(sneaky), 200)).balance, 0);
});

Deno.test("the gateway refuses missing, forged, expired and unsigned tokens", async () => {
  const user = await userWithHistory();
  const refused: [string | null, string][] = [
    [null, "UNAUTHORIZED_NO_AUTH_HEADER"],
    [
      await userToken(user, { secret: "a-forged-secret-of-at-least-32-characters" }),
      "UNAUTHORIZED_LEGACY_JWT",
    ],
    [await userToken(user, { expiresIn: -60 }), "UNAUTHORIZED_LEGACY_JWT"],
    [unsignedToken(user), "UNAUTHORIZED_LEGACY_JWT"],
    ["not-a-jwt", "UNAUTHORIZED_LEGACY_JWT"],
  ];
  for (const [token, code] of refused) {
    const response = await getBalance(token);
    const body = await expectStatus(response, 401);
    assert.equal(body.code, code);
    assert.equal(response.headers.get("sb-error-code"), code);
  }
});

Deno.test("the project's keys are not a user's token", async () => {
  for (const key of [ANON_KEY, SERVICE_KEY]) {
    const body = await expectStatus(await getBalance(key), 403);
    assert.equal(body.code, "user_token_required");
  }
});

Deno.test("without the gateway's check, the database still refuses bad tokens", async () => {
  // As if deployed with --no-verify-jwt: the function itself, in this process.
  const user = await userWithHistory();
  const call = (token: string) =>
    balanceFunction.fetch(
      new Request(`${SUPABASE_URL}/credit-balance`, {
        headers: { Authorization: `Bearer ${token}` },
      }),
    );
  assert.equal((await expectStatus(await call(await userToken(user)), 200)).balance, 70);
  const forged = await userToken(user, { secret: "a-forged-secret-of-at-least-32-characters" });
  const refused: [string, number, string][] = [
    [forged, 401, "PGRST301"],
    [await userToken(user, { expiresIn: -60 }), 401, "PGRST301"],
    [unsignedToken(user), 401, "PGRST301"],
    ["not-a-jwt", 401, "unauthorized"],
  ];
  for (const [token, status, code] of refused) {
    const body = await expectStatus(await call(token), status);
    assert.equal(body.code, code, JSON.stringify(body));
    assert.equal(body.balance, undefined);
  }
});

Deno.test("malformed requests get a clear 4xx", async () => {
  const token = await userToken(newUserId());
  for (const limit of ["0", "101", "abc", "1.5", "-1", ""]) {
    const body = await expectStatus(await getBalance(token, `?limit=${limit}`), 400);
    assert.equal(body.code, "invalid_request");
  }
  const post = await callFunction("credit-balance", {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
  });
  assert.equal((await expectStatus(post, 405)).code, "method_not_allowed");
});

Deno.test("browsers may call it: CORS preflight and headers", async () => {
  const preflight = await callFunction("credit-balance", {
    method: "OPTIONS",
    headers: { Origin: "https://app.example", "Access-Control-Request-Method": "GET" },
  });
  assert.equal(preflight.status, 204);
  await preflight.body?.cancel();
  assert.equal(preflight.headers.get("access-control-allow-origin"), "*");
  assert.match(preflight.headers.get("access-control-allow-headers") ?? "", /authorization/);
  const answer = await getBalance(await userToken(newUserId()));
  assert.equal(answer.headers.get("access-control-allow-origin"), "*");
  await answer.body?.cancel();
});
