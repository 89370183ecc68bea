-- ducto: deduct 1 credit from a random user with a fresh idempotency key, as every real
-- charge has one.
\set u random(1, 1000)
\set k random(1, 1000000000000000)
select credit_deduct_credits('bench-' || :u, 1, 0, '{}', 'k-' || :k);
