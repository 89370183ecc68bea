// What the credit-balance edge function answers, in terms of the generated database types.
// Types only, with no Deno or npm: specifics, so a Node or browser TypeScript app can copy
// this file with database.types.ts and type the function's answer:
//
//   const { data } = await supabase.functions.invoke<Account>("credit-balance", { method: "GET" });

import type { RpcResult, TableRow } from "./database.types.ts";

/** The journal columns credit-balance reads (docs/ledger.md, "Journal types"). */
export type AccountTransaction = Pick<
  TableRow<"credit_transactions">,
  | "id"
  | "seq"
  | "type"
  | "amount"
  | "balance_after"
  | "model"
  | "usage"
  | "job_name"
  | "metadata"
  | "refund_of"
  | "reservation_id"
  | "created_at"
>;

/** A team the user is a member of, with the balance of its pool. */
export type AccountTeam =
  & Pick<TableRow<"credit_team_members">, "team_id" | "role" | "spend_limit" | "limit_period">
  & {
    name: TableRow<"credit_teams">["name"];
    pool_balance: TableRow<"credit_accounts">["balance"];
  };

/** A signed-in user's balance, plan, teams and newest transactions (newest first). */
export type Account = RpcResult<"credit_get_balance"> & {
  plan: RpcResult<"credit_get_user_plan">;
  teams: AccountTeam[];
  transactions: AccountTransaction[];
};
