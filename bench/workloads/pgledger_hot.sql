-- pgledger on one hot account: a transfer of 1 from account 1 to a random other one.
\set b random(2, 1000)
select id from pgledger_create_transfer(
    (select id from bench_account where n = 1), (select id from bench_account where n = :b), 1
);
