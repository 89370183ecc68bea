// The supabase-js example (examples/supabase-js/ledger.mjs) under Node against the stack:
// a signed-in user reads their balance, plan and teams and cannot call the service role's
// RPCs (ledger, pricing, plan and team administration, analytics);
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
  checkFeature,
  getBalance,
  getPlan,
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
  // plan ids are global: this test's own
  const plan = `team-${randomUUID()}`;
  const team = randomUUID();
  let me;

  before(async () => {
    me = await signedIn(user);
    await serverRpc("credit_add_credits", { p_user_id: user, p_amount: 250, p_tx_type: "grant" });
    await serverRpc("credit_deduct_credits", { p_user_id: user, p_amount: 40 });
    await serverRpc("credit_upsert_plan", {
      p_plan_id: plan,
      p_name: "Team",
      p_features: { export: true, max_projects: 10, beta: false },
    });
    await serverRpc("credit_assign_plan", { p_user_id: user, p_plan_id: plan });
    await serverRpc("credit_upsert_team", { p_team_id: team, p_name: "Acme" });
    await serverRpc("credit_add_credits", { p_user_id: `team:${team}`, p_amount: 600 });
    await serverRpc("credit_set_team_member", { p_team_id: team, p_user_id: user });
  });

  test("reads their balance, plan, teams and transactions", async () => {
    assert.deepEqual(await getBalance(me, user), {
      user_id: user,
      balance: 210,
      held: 0,
      available: 210,
      scopes: [{ scope: null, remaining: 210 }],
    });
    const account = await myAccount(me);
    assert.equal(account.balance, 210);
    assert.deepEqual(
      [account.plan.plan_id, account.plan.features, account.plan.is_default],
      [plan, { export: true, max_projects: 10, beta: false }, false],
    );
    assert.deepEqual(account.teams, [{
      team_id: team,
      name: "Acme",
      role: "member",
      spend_limit: null,
      limit_period: null,
      pool_balance: 600,
    }]);
    assert.deepEqual(account.transactions.map((row) => row.amount), [-40, 250]);
    assert.deepEqual(await getPlan(me, user), account.plan);
    const features = await Promise.all(
      ["export", "max_projects", "beta", "absent"].map((name) => checkFeature(me, user, name)),
    );
    assert.deepEqual(features.map((check) => [check.has_feature, check.value, check.plan_id]), [
      [true, true, plan],
      [true, 10, plan],
      [false, false, plan],
      [false, null, plan],
    ]);
    const rows = await journal(me, user);
    assert.deepEqual(rows.map((row) => [row.seq, row.type, row.amount]), [
      [1, "grant", 250],
      [2, "usage", -40],
    ]);
  });

  test("reads their own balance and plan without naming themselves", async () => {
    // credit_get_balance() and credit_get_user_plan() without arguments: the token's user
    assert.deepEqual(await getBalance(me), await getBalance(me, user));
    assert.deepEqual(await getPlan(me), await getPlan(me, user));
    assert.equal((await getPlan(me)).plan_id, plan);
  });

  test("reads their own statement without naming themselves", async () => {
    const window = { p_start: "2020-01-01T00:00:00Z", p_end: "2100-01-01T00:00:00Z" };
    const { data, error } = await me.rpc("credit_statement", window);
    assert.equal(error, null, JSON.stringify(error));
    assert.deepEqual(
      [data.user_id, data.opening_balance, data.closing_balance, data.by_type],
      [user, 0, 210, [{ type: "grant", count: 1, amount: 250 }, {
        type: "usage",
        count: 1,
        amount: -40,
      }]],
    );
    const at = await me.rpc("credit_balance_at", { p_at: "2100-01-01T00:00:00Z" });
    assert.equal(at.data?.balance, 210, JSON.stringify(at.error));
  });

  test("reads their own limits without naming themselves", async () => {
    await serverRpc("credit_set_limits", {
      p_user_id: user,
      p_windows: [{ period: "day", spend_limit: 100000 }],
    });
    const { data, error } = await me.rpc("credit_get_limits");
    await serverRpc("credit_set_limits", { p_user_id: user });
    assert.equal(error, null, JSON.stringify(error));
    assert.equal(data.user_id, user);
    assert.deepEqual(data.windows.map((w) => [w.period, w.spend_limit]), [["day", 100000]]);
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
      // plans: a user cannot make or change a plan, nor pick their own
      ["credit_upsert_plan", { p_plan_id: plan, p_name: "Mine", p_features: { beta: true } }],
      ["credit_assign_plan", { p_user_id: user, p_plan_id: plan }],
      ["credit_grant_allowances", { p_user_id: user }],
      // teams: nor join, leave, rename or spend from a team's pool
      ["credit_upsert_team", { p_team_id: team, p_name: "Mine" }],
      ["credit_set_team_member", { p_team_id: team, p_user_id: user, p_role: "owner" }],
      ["credit_remove_team_member", { p_team_id: team, p_user_id: user }],
      ["credit_deduct_team", { p_team_id: team, p_user_id: user, p_metrics: { model: "gpt-4o" } }],
      ["credit_aggregate_stats", { p_start: "2020-01-01", p_end: "2030-01-01" }],
      ["credit_top_users", { p_limit: 10, p_start: "2020-01-01", p_end: "2030-01-01" }],
      // limits: nor lift their own
      ["credit_set_limits", { p_user_id: user }],
      ["credit_set_plan_credit_line", { p_plan_id: plan, p_credit_line: 1000 }],
    ];
    for (const [name, args] of attempts) {
      const { error, status } = await me.rpc(name, args);
      assert.equal(error?.code, "42501", `${name}: ${JSON.stringify(error)}`);
      assert.equal(status, 403, name);
    }
    // nothing moved: the balance, the plan, the membership, the pool
    assert.equal((await getBalance(server, user)).balance, 210);
    const after = await myAccount(me);
    assert.deepEqual([after.plan.plan_id, after.plan.features.beta], [plan, false]);
    assert.deepEqual(
      after.teams.map((one) => [one.team_id, one.name, one.role, one.pool_balance]),
      [[team, "Acme", "member", 600]],
    );
  });

  test("cannot read or write another user's ledger", async () => {
    const other = randomUUID();
    await serverRpc("credit_add_credits", { p_user_id: other, p_amount: 5 });
    await refused(getBalance(me, other), "42501", 403);
    await refused(getPlan(me, other), "42501", 403);
    await refused(checkFeature(me, other, "export"), "42501", 403);
    for (
      const [name, args] of [
        ["credit_statement", { p_user_id: other, p_start: "2020-01-01", p_end: "2100-01-01" }],
        ["credit_balance_at", { p_user_id: other, p_at: "2100-01-01" }],
        ["credit_get_limits", { p_user_id: other }],
      ]
    ) {
      const { error, status } = await me.rpc(name, args);
      assert.deepEqual([error?.code, status], ["42501", 403], name);
    }
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
          await refused(charge, vector.error, 422); // a refused argument
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

describe("Supabase's new API keys", () => {
  test("a server with the secret key charges; the publishable key cannot", async () => {
    // sb_secret_... is not a JWT: supabase-js sends it as apikey and bearer, and the
    // gateway runs the request as service_role; sb_publishable_... runs as anon
    const secret = serverClient(URL, stackEnv("SUPABASE_SECRET_KEY"));
    const publishable = serverClient(URL, stackEnv("SUPABASE_PUBLISHABLE_KEY"));
    const user = randomUUID();
    const added = await secret.rpc("credit_add_credits", { p_user_id: user, p_amount: 10 });
    assert.equal(added.error, null, JSON.stringify(added.error));
    assert.equal((await getBalance(secret, user)).balance, 10);
    const refusedAdd = await publishable.rpc("credit_add_credits", {
      p_user_id: user,
      p_amount: 10,
    });
    assert.equal(refusedAdd.error?.code, "42501");
    assert.equal((await getBalance(server, user)).balance, 10);
  });
});
