-- pgbench script: one ducto deduct, always for the same user: every client queues on
-- one account row (the hot-account case; compare with tpcb-like at scale 1).
select credit_deduct_credits('bench-1', 1);
