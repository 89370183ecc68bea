-- ducto on one hot account (a team pool): a keyed deduct of 1, always from bench-1.
\set k random(1, 1000000000000000)
select credit_deduct_credits('bench-1', 1, 0, '{}', 'k-' || :k);
