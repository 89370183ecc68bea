-- pgbench script: one ducto deduct (credit_deduct_credits) for a random one of the
-- 1,000 users that bench/seed.sql funds with 10^12 credits each, so it never fails.
-- One round trip per transaction; bench/run compares it with the built-in tpcb-like.
\set uid random(1, 1000)
select credit_deduct_credits('bench-' || :uid::text, 1);
