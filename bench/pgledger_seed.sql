-- bench/run, after loading pgledger (../shared/peers/pgledger): 1,000 accounts, and their
-- ids by number so that a pgbench script can name them (pgledger's ids are ULID text).
create table bench_account (
    n int primary key,
    id text not null
);

insert into bench_account (n, id)
select n, (select a.id from pgledger_create_account('bench-' || n, 'USD') as a)
from generate_series(1, 1000) as n;
