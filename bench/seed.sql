-- ducto for bench/run: the users bench-1 .. bench-1000, 10^12 credits each, so no debit
-- ever fails (a pgbench client stops at its first error), and the sample pricing
-- (psql -v pricing="$(cat examples/pricing.json)") for credit_deduct_usage.
select count(*) as funded_users
from
    generate_series(1, 1000) as u (n),
    lateral public.credit_add_credits('bench-' || u.n::text, 1000000000000) as r;

select version from public.credit_publish_pricing(:'pricing'::jsonb, 'bench');
