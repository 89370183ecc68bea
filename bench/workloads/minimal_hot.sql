-- The floor on one hot account: every client queues on the same balance row.
select debit(1, 1);
