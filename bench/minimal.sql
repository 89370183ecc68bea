-- The floor of any ledger, for bench/run: a debit is one conditional UPDATE of a balance
-- row and one INSERT into a journal with a single index (its primary key). 1,000
-- accounts funded with 10^12, so no debit of 1 ever fails.
create table account (
    id int primary key,
    balance bigint not null check (balance >= 0)
);

create table journal (
    id bigint generated always as identity primary key,
    account_id int not null,
    amount bigint not null,
    created_at timestamptz not null default now()
);

create function debit(p_account int, p_amount bigint)
returns bigint
language plpgsql
as $$
declare
    v_balance bigint;
begin
    update account set balance = balance - p_amount
    where id = p_account and balance >= p_amount
    returning balance into v_balance;
    if v_balance is null then
        raise exception 'insufficient balance on account %', p_account;
    end if;
    insert into journal (account_id, amount) values (p_account, -p_amount);
    return v_balance;
end
$$;

insert into account (id, balance)
select n, 1000000000000 from generate_series(1, 1000) as n;
