// credit-balance against the stack, with real JWTs: a user reads their own balance, plan,
// teams and journal and nothing else; every wrong, missing, forged or expired token is
// refused.

import assert from "node:assert/strict";
import balanceFunction from "../credit-balance/index.ts";
import {
  ANON_KEY,
  callFunction,
  expectStatus,
  newUserId,
  SERVICE_KEY,
  serviceRpc,
  serviceSelect,
  SUPABASE_URL,
  unsignedToken,
  userToken,
} from "./helpers.ts";
import type { Json, TableRow } from "../_shared/database.types.ts";

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

/** A fresh plan (plan ids are global: each test makes its own), assigned to `user`. */
async function assignedPlan(user: string, features: Json): Promise<string> {
  const plan = `pro-${newUserId()}`;
  await serviceRpc("credit_upsert_plan", { p_plan_id: plan, p_name: "Pro", p_features: features });
  await serviceRpc("credit_assign_plan", { p_user_id: user, p_plan_id: plan });
  return plan;
}

/** A fresh team whose pool holds `credits`, with `members` (a spending limit each). */
async function teamWith(credits: number, ...members: string[]): Promise<string> {
  const team = newUserId();
  await serviceRpc("credit_upsert_team", { p_team_id: team, p_name: `Team ${team}` });
  await serviceRpc("credit_add_credits", { p_user_id: `team:${team}`, p_amount: credits });
  for (const member of members) {
    await serviceRpc("credit_set_team_member", {
      p_team_id: team,
      p_user_id: member,
      p_spend_limit: 100,
      p_limit_period: "month",
    });
  }
  return team;
}

Deno.test("a signed-in user reads their balance, plan, teams and newest transactions", async () => {
  const user = await userWithHistory();
  const plan = await assignedPlan(user, { export: true, max_projects: 10 });
  const team = await teamWith(500, user);
  await teamWith(900); // a team the user is not in
  // the pool moves without the user's account moving
  await serviceRpc("credit_deduct_credits", { p_user_id: `team:${team}`, p_amount: 25 });
  const { plan: answered, teams, transactions, ...balance } = await expectStatus(
    await getBalance(await userToken(user)),
    200,
  );
  assert.deepEqual(balance, {
    user_id: user,
    balance: 70,
    held: 20,
    available: 50,
    scopes: [{ scope: null, remaining: 70 }],
  });
  const { assigned_at, ...assignment } = answered as Record<string, unknown>;
  assert.deepEqual(assignment, {
    user_id: user,
    plan_id: plan,
    plan_name: "Pro",
    features: { export: true, max_projects: 10 },
    is_default: false,
    allowance: null,
    allowance_period: null,
    rollover_cap: null,
  });
  assert.equal(typeof assigned_at, "string");
  assert.deepEqual(teams, [{
    team_id: team,
    name: `Team ${team}`,
    role: "member",
    spend_limit: 100,
    limit_period: "month",
    pool_balance: 475,
  }]);
  assert.deepEqual(
    (transactions as Record<string, unknown>[]).map((
      { seq, type, amount, balance_after, metadata },
    ) => ({
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

Deno.test("a user without an account has a zero balance, no teams and no transactions", async () => {
  const user = newUserId();
  const { plan, ...rest } = await expectStatus(await getBalance(await userToken(user)), 200);
  assert.deepEqual(rest, {
    user_id: user,
    balance: 0,
    held: 0,
    scopes: [],
    available: 0,
    teams: [],
    transactions: [],
  });
  // whatever the default plan is, the user has no assignment: on it if there is one
  const { user_id, plan_id, is_default, assigned_at } = plan as Record<string, unknown>;
  assert.deepEqual([user_id, is_default, assigned_at], [user, plan_id !== null, null]);
});

Deno.test("a user without an assignment is on the default plan, else on none", async () => {
  const token = await userToken(newUserId());
  const planOf = async () => {
    const { plan_id, plan_name, features, is_default } =
      (await expectStatus(await getBalance(token), 200)).plan as Record<string, unknown>;
    return { plan_id, plan_name, features, is_default };
  };
  // the default plan is the database's: this test sets its own and puts the old one back
  const [previous] = await serviceSelect<TableRow<"credit_plans">>(
    "credit_plans",
    "is_default=is.true",
  );
  const free = `free-${newUserId()}`;
  const upsertFree = (isDefault: boolean) =>
    serviceRpc("credit_upsert_plan", {
      p_plan_id: free,
      p_name: "Free",
      p_features: { export: false },
      p_is_default: isDefault,
    });
  try {
    await upsertFree(true);
    assert.deepEqual(await planOf(), {
      plan_id: free,
      plan_name: "Free",
      features: { export: false },
      is_default: true,
    });
    // no default plan: no plan and no features, never an error, and not on a default
    await upsertFree(false);
    assert.deepEqual(await planOf(), {
      plan_id: null,
      plan_name: null,
      features: {},
      is_default: false,
    });
  } finally {
    if (previous) {
      await serviceRpc("credit_upsert_plan", {
        p_plan_id: previous.id,
        p_name: previous.name,
        p_features: previous.features,
        p_is_default: true,
      });
    }
  }
});

Deno.test("a user never sees another user's ledger, plan or teams", async () => {
  const owner = await userWithHistory();
  const ownersPlan = await assignedPlan(owner, { export: true });
  const team = await teamWith(500, owner);
  const stranger = newUserId();
  // the stranger's token carries their own id: the function reads only that
  for (
    const token of [
      await userToken(stranger),
      // and the owner's id in other claims changes nothing
      await userToken(stranger, { claims: { user_id: owner, email: owner } }),
    ]
  ) {
    const body = await expectStatus(await getBalance(token), 200);
    assert.equal(body.balance, 0);
    assert.deepEqual(body.transactions, []);
    assert.deepEqual(body.teams, []);
    const plan = body.plan as Record<string, unknown>;
    assert.equal(plan.user_id, stranger);
    assert.notEqual(plan.plan_id, ownersPlan);
    assert.doesNotMatch(JSON.stringify(body), new RegExp(`${owner}|${team}`));
  }
  // a member removed from the team no longer sees it
  await serviceRpc("credit_remove_team_member", { p_team_id: team, p_user_id: owner });
  const after = await expectStatus(await getBalance(await userToken(owner)), 200);
  assert.deepEqual(after.teams, []);
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
    assert.deepEqual([body.balance, body.plan, body.teams], [undefined, undefined, undefined]);
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
