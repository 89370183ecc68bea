-- The users of the deduct benchmark: bench-1 .. bench-1000, 10^12 credits each, so no
-- deduct of 1 ever fails (a pgbench client stops at its first error).
select count(*) as funded_users
from
    generate_series(1, 1000) as u (n),
    lateral public.credit_add_credits('bench-' || u.n::text, 1000000000000) as r;
