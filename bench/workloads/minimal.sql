-- The floor (bench/minimal.sql): debit 1 from a random one of 1,000 accounts.
\set a random(1, 1000)
select debit(:a, 1);
