// The supabase-js example (examples/supabase-js/ledger.mjs) under Node against the stack:
// a signed-in user reads their balance and plan and cannot call the service role's RPCs;
// a server with the service role charges the shared pricing vectors
// (tests/pricing_vectors.json, which the Python engine and the SQL cost function are
// tested against) and is charged exactly the vectors' credits.
//
//   node --test tests/js/      (with the stack's exports in the environment)

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { before, describe, test } from "node:test";
import { SignJWT } from "jose";
import {
  chargeUsage,
  getBalance,
  journal,
  LedgerError,
  myAccount,
  serverClient,
  userClient,
} from "../../examples/supabase-js/ledger.mjs";

function stackEnv(name) {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run with scripts/run-tests or after local-stack up`);
  return value;
}

const URL = stackEnv("SUPABASE_URL");
const ANON_KEY = stackEnv("SUPABASE_ANON_KEY");
const server = serverClient(URL, stackEnv("SUPABASE_SERVICE_ROLE_KEY"));

/** A signed-in user's client, with an access token signed by the stack's secret. */
async function signedIn(userId) {
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({ role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(userId)
    .setIssuedAt(now)
    .setExpirationTime(now + 600)
    .sign(new TextEncoder().encode(stackEnv("SUPABASE_JWT_SECRET")));
  return userClient(URL, ANON_KEY, () => Promise.resolve(token));
}

async function serverRpc(name, args) {
  const { data, error } = await server.rpc(name, args);
  assert.equal(error, null, JSON.stringify(error));
  return data;
}

/** Asserts that `promise` fails with a LedgerError of `code` (and `status`). */
async function refused(promise, code, status) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof LedgerError, String(error));
    assert.equal(error.code, code, error.message);
    if (status) assert.equal(error.status, status);
    return true;
  });
}

describe("a signed-in user", () => {
  const user = randomUUID();
  let me;

  before(async () => {
    me = await signedIn(user);
    await serverRpc("credit_add_credits", { p_user_id: user, p_amount: 250, p_tx_type: "grant" });
    await serverRpc("credit_deduct_credits", { p_user_id: user, p_amount: 40 });
  });

  test("reads their balance, plan and transactions", async () => {
    assert.deepEqual(await getBalance(me, user), {
      user_id: user,
      balance: 210,
      held: 0,
      available: 210,
    });
    const account = await myAccount(me);
    assert.equal(account.balance, 210);
    assert.equal(account.plan, null);
    assert.deepEqual(account.transactions.map((row) => row.amount), [-40, 250]);
    const rows = await journal(me, user);
    assert.deepEqual(rows.map((row) => [row.seq, row.type, row.amount]), [
      [1, "grant", 250],
      [2, "usage", -40],
    ]);
  });

  test("cannot call the service role's RPCs", async () => {
    const attempts = [
      ["credit_add_credits", { p_user_id: user, p_amount: 1000 }],
      ["credit_deduct_usage", { p_user_id: user, p_metrics: { model: "gpt-4o" } }],
      ["credit_deduct_credits", { p_user_id: user, p_amount: 1 }],
      ["credit_refund_transaction", { p_transaction_id: randomUUID() }],
      ["credit_publish_pricing", { p_config: { default: { input: 0, output: 0 } } }],
      ["credit_calculate_cost", { p_metrics: { model: "gpt-4o" } }],
      ["credit_sweep_expired", {}],
      ["credit_verify_ledger", {}],
    ];
    for (const [name, args] of attempts) {
      const { error, status } = await me.rpc(name, args);
      assert.equal(error?.code, "42501", `${name}: ${JSON.stringify(error)}`);
      assert.equal(status, 403, name);
    }
    assert.equal((await getBalance(server, user)).balance, 210);
  });

  test("cannot read or write another user's ledger", async () => {
    const other = randomUUID();
    await serverRpc("credit_add_credits", { p_user_id: other, p_amount: 5 });
    await refused(getBalance(me, other), "42501", 403);
    assert.deepEqual(await journal(me, other), []);
    const { error } = await me.from("credit_transactions").insert({});
    assert.equal(error?.code, "42501");
  });
});

// ------------------------------------------------------------ the shared pricing vectors

const ROOT = new globalThis.URL("../../", import.meta.url);
const VECTORS = JSON.parse(readFileSync(new globalThis.URL("tests/pricing_vectors.json", ROOT)));

function vectorConfig(name) {
  const config = VECTORS.configs[name];
  return typeof config === "string"
    ? JSON.parse(readFileSync(new globalThis.URL(config, ROOT)))
    : config;
}

describe("a server with the service role", () => {
  for (const name of Object.keys(VECTORS.configs)) {
    test(`charges the vectors of config ${name} at the shared prices`, async () => {
      await serverRpc("credit_publish_pricing", {
        p_config: vectorConfig(name),
        p_label: `supabase-js vectors ${name}`,
      });
      const user = randomUUID();
      const funds = 10 ** 15;
      await serverRpc("credit_add_credits", { p_user_id: user, p_amount: funds });
      let spent = 0;
      for (const vector of VECTORS.vectors.filter((one) => one.config === name)) {
        const charge = chargeUsage(server, user, vector.metrics, { metadata: { v: vector.name } });
        if (vector.error) {
          await refused(charge, vector.error, 400);
          continue;
        }
        const charged = await charge;
        assert.equal(charged.amount, vector.credits, vector.name);
        spent += vector.credits;
        assert.equal(charged.balance_after, funds - spent, vector.name);
      }
      for (const job of VECTORS.fixed_jobs.filter((one) => one.config === name)) {
        const { data, error } = await server.rpc("credit_deduct_fixed", {
          p_user_id: user,
          p_job_name: job.job_name,
        });
        if (job.error) {
          assert.equal(error?.code, job.error, job.job_name);
          continue;
        }
        assert.equal(data?.amount, job.credits, job.job_name);
        spent += job.credits;
      }
      assert.equal((await getBalance(server, user)).balance, funds - spent);
    });
  }
});
