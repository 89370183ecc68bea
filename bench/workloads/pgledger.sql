-- pgledger: a transfer of 1 between two different random accounts of 1,000
-- (b = a + 1 .. a + 999, modulo 1,000).
\set a random(1, 1000)
\set b 1 + (:a + random(0, 998)) % 1000
select id from pgledger_create_transfer(
    (select id from bench_account where n = :a), (select id from bench_account where n = :b), 1
);
