-- ducto: a keyed usage charge priced by the published pricing (examples/pricing.json):
-- gpt-4o, 500 input and 200 output tokens, for a random one of the users bench-1 ..
-- bench-:users (pgbench -D users=N).
\set u random(1, :users)
\set k random(1, 1000000000000000)
select credit_deduct_usage(
    'bench-' || :u, '{"model": "gpt-4o", "input_tokens": 500, "output_tokens": 200}', '{}',
    'k-' || :k
);
