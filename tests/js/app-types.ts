// ducto's types as a Node or browser TypeScript app uses them, type-checked by tsc
// (tsconfig.json) and deno check, never run: a result field the ledger always fills is
// not nullable, and credit-balance's answer is typed without Deno.

import { createClient } from "@supabase/supabase-js";
import type { Database, RpcResult } from "../../supabase/functions/_shared/database.types.ts";
import type { Account } from "../../supabase/functions/_shared/account.types.ts";

const supabase = createClient<Database>("http://127.0.0.1:54321", "<anon key>");

/** What the signed-in user may spend now. */
export async function available(): Promise<number> {
  const { data, error } = await supabase.rpc("credit_get_balance");
  if (error) throw error;
  const balance: number = data.balance;
  return balance - data.held;
}

/** A charge's new balance, and its journal row (null when it cost 0 credits). */
export function afterCharge(
  charged: RpcResult<"credit_deduct_usage">,
): [number, string | null, boolean] {
  return [charged.balance_after, charged.transaction_id, charged.is_replay];
}

/** The user's credits and those of their teams' pools, from credit-balance. */
export async function allCredits(): Promise<number> {
  const { data } = await supabase.functions.invoke<Account>("credit-balance", { method: "GET" });
  if (!data) return 0;
  const plan: string = data.plan.is_default ? "default" : data.plan.plan_name ?? "none";
  console.log(plan, data.transactions.map((row) => [row.seq, row.amount, row.created_at]));
  return data.teams.reduce((sum, team) => sum + team.pool_balance, data.available);
}
