-- ducto: deduct 1 credit from a random one of the 1,000 users, no idempotency key.
\set u random(1, 1000)
select credit_deduct_credits('bench-' || :u, 1);
