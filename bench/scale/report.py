"""bench/scale/run's measurements and its table (``make bench-scale``).

    report.py sizes URL                 the one-day window's rows and the table sizes
    report.py analytics URL SECONDS     each analytics function on the one-day window, in
                                        turn, for SECONDS: one line per run
    report.py medians FILE              the median of each figure of the lines of FILE
    report.py latency LOG...            p50/p99 of pgbench per-transaction logs (-l)
    report.py table RESULT...           the table of the results of each size, smallest first

Each prints ``name value`` lines, which bench/scale/run collects in one result file per
size (the runs of ``analytics`` in a file of their own, which ``medians`` sums up); ``table``
reads them back.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

# each analytics function on the window [%(start)s, %(end)s)
ANALYTICS = {
    "aggregate_stats": "select * from public.credit_aggregate_stats(%(start)s, %(end)s)",
    "daily_spend": "select * from public.credit_daily_spend(%(start)s, %(end)s)",
    "spend_by_model": "select * from public.credit_spend_by_model(%(start)s, %(end)s)",
    "spend_by_user": "select * from public.credit_spend_by_user(%(start)s, %(end)s)",
    "top_users": "select * from public.credit_top_users(10, %(start)s, %(end)s)",
}

# the last 24 hours: the generated journal's rows end now, at one rate for every size
DAY = "select now() - interval '1 day', now()"

# tables of the ledger and their sizes (heap, indexes, TOAST), largest first; a partitioned
# table is the sum of its partitions
SIZES = """
select coalesce(p.relname, c.relname), sum(pg_total_relation_size(c.oid))
from pg_class as c join pg_namespace as n on n.oid = c.relnamespace
left join pg_inherits as i on i.inhrelid = c.oid
left join pg_class as p on p.oid = i.inhparent
where c.relkind = 'r' and n.nspname in ('public', 'credit_private')
group by 1
order by 2 desc
"""

MB = 1024 * 1024


def window(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, object]:
    start, end = conn.execute(DAY).fetchone() or (None, None)
    return {"start": start, "end": end}


def sizes(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "select count(*) from public.credit_transactions"
            " where created_at >= %(start)s and created_at < %(end)s",
            window(conn),
        ).fetchone()
        print(f"day_rows {rows[0] if rows else 0}")
        tables = conn.execute(SIZES).fetchall()
        for name, size in tables:
            if name in ("credit_transactions", "credit_grant_draws"):
                print(f"size_{name}_mb {size / MB:.1f}")
        print(f"size_all_mb {sum(size for _, size in tables) / MB:.1f}")


def analytics(url: str, seconds: float) -> None:
    """Each function once to warm (plans and the window's blocks), then in turn until
    ``seconds`` have passed: ``day_<name>_ms`` for each run."""
    with psycopg.connect(url, autocommit=True) as conn:
        days = window(conn)
        for query in ANALYTICS.values():
            conn.execute(query, days).fetchall()
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            for name, query in ANALYTICS.items():
                began = time.perf_counter()
                conn.execute(query, days).fetchall()
                print(f"day_{name}_ms {(time.perf_counter() - began) * 1000:.2f}")


def medians(path: str) -> None:
    runs: dict[str, list[float]] = {}
    for line in Path(path).read_text().splitlines():
        name, value = line.split()
        runs.setdefault(name, []).append(float(value))
    for name, values in runs.items():
        print(f"{name} {statistics.median(values):.2f}")
        print(f"{name.removesuffix('_ms')}_runs {len(values)}")


def latency(logs: list[str]) -> None:
    """p50 and p99 (nearest rank) in ms of the latencies (us, 3rd field) of pgbench -l logs."""
    values = sorted(
        int(line.split()[2]) for log in logs for line in Path(log).read_text().splitlines()
    )
    if not values:
        sys.exit("report.py latency: the logs hold no transaction")

    def rank(p: float) -> float:
        return values[max(math.ceil(p * len(values)), 1) - 1] / 1000

    print(f"charges {len(values)}\np50_ms {rank(0.50):.2f}\np99_ms {rank(0.99):.2f}")


def read_result(path: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in Path(path).read_text().splitlines() if line)


def within(limit: float) -> Callable[[float], bool]:
    """A ratio at most ``limit``: a cost grows by less than that."""
    return lambda ratio: ratio <= limit


def at_least(limit: float) -> Callable[[float], bool]:
    return lambda ratio: ratio >= limit


# label, result key, target on the ratio largest / smallest (None: no target)
LINES: list[tuple[str, str, tuple[str, Callable[[float], bool]] | None]] = [
    ("journal rows generated", "journal_rows", None),
    ("generation s", "generation_s", None),
    ("journal MB (heap + indexes)", "size_credit_transactions_mb", None),
    ("grant draws MB", "size_credit_grant_draws_mb", None),
    ("all ledger tables MB", "size_all_mb", None),
    ("credit_verify_ledger() s", "verify_s", None),
    ("checkpoints at the month's start s", "checkpoints_s", None),
    ("verify, newest month s", "verify_month_s", None),
    ("charge TPS", "tps", (">= 0.8", at_least(0.8))),
    ("charge p50 ms", "p50_ms", None),
    ("charge p99 ms", "p99_ms", ("<= 1.2", within(1.2))),
    ("charges measured", "charges", None),
    ("journal rows after the charges", "rows_after", None),
    ("1 day: journal rows", "day_rows", None),
    ("1 day: runs of each function", "day_aggregate_stats_runs", None),
    *((f"1 day: {name} ms", f"day_{name}_ms", ("<= 3", within(3.0))) for name in ANALYTICS),
]


# figures that are counts, printed whole
COUNTS = {"rows", "journal_rows", "rows_after", "charges", "day_rows", "day_aggregate_stats_runs"}


def number(key: str, text: str | None) -> str:
    if text is None:
        return "n/a"
    value = float(text)
    return f"{value:,.0f}" if value >= 100 or key in COUNTS else f"{value:.2f}"


def table(paths: list[str]) -> None:
    results = [read_result(path) for path in paths]
    sizes = [f"{int(r['rows']):,} rows" for r in results]
    width = 32
    print(f"\n{'':<{width}}" + "".join(f"{s:>18}" for s in sizes) + f"{'ratio':>9}  target")
    for label, key, target in LINES:
        values = [r.get(key) for r in results]
        line = f"{label:<{width}}" + "".join(f"{number(key, v):>18}" for v in values)
        first, last = values[0], values[-1]
        if len(values) > 1 and first is not None and last is not None and float(first) > 0:
            ratio = float(last) / float(first)
            line += f"{ratio:>9.2f}"
            if target is not None:
                line += f"  {target[0]:<7} {'met' if target[1](ratio) else 'NOT MET'}"
        elif target is not None:
            line += f"{'-':>9}  {target[0]}"
        print(line)
    print(
        "\nratio: the largest size's figure over the smallest's. Targets: the charge's TPS and"
        " p99 within 20%,\na one-day analytics window within 3x. Each size is the same"
        " rate of rows over a longer or shorter\nhistory: the one-day window holds about as"
        " many rows in each (all of a size that spans less)."
    )


def main() -> None:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "sizes":
        sizes(args[0])
    elif command == "analytics":
        analytics(args[0], float(args[1]))
    elif command == "medians":
        medians(args[0])
    elif command == "latency":
        latency(args)
    elif command == "table":
        table(args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
