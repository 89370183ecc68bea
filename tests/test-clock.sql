-- The test suite's clock: credit_private.clock() that a session moves with
-- set_config('ducto.now', '<timestamptz>', ...). Only test databases get it
-- (scripts/local-stack up, db-create --test-clock); an installed ledger's clock is now().
create or replace function credit_private.clock()
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
    return coalesce(nullif(current_setting('ducto.now', true), '')::timestamptz, now());
end;
$$;
