"""Archive closed months: export a month's journal and draws, check the export against the
checkpoints, then detach the month's partitions (docs/operations.md, "Archive").

An owner operation over a direct PostgreSQL connection (``ducto archive``): the SQL it
calls, ``credit_private.archive_expectation`` and ``credit_private.archive_month``, is
granted to no API role. For each month, oldest first:

1. the month's partitions are copied, one JSON object per line, to
   ``credit_transactions_YYYY_MM.jsonl`` (ordered by account and seq) and
   ``credit_grant_draws_YYYY_MM.jsonl`` (by account, journal row and id), and
   ``manifest.json`` records their rows and sha256;
2. the files are read back: their sums must match the manifest, and per account their
   rows and the sum of their amounts what the checkpoints at the month's start and end say
   the month holds; every draw must belong to an exported row;
3. ``archive_month`` checks the partitions against the checkpoints and the export's totals
   under lock, and only then detaches them.

A month that is not the oldest attached one (DC133) or whose closing checkpoints are not
taken (DC134) is refused before anything is exported.

Any mismatch raises :class:`~ducto.errors.LedgerInconsistentError` and detaches nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ducto.errors import DuctoError, LedgerInconsistentError, StoreError, error_from_sqlstate

MANIFEST = "manifest.json"

#: The attached month partitions of the journal, oldest first (the default one has no month).
_MONTHS = """
select month from public.credit_partitions()
where partition_name like 'credit\\_transactions\\_p%%' and month < %s
order by month
"""


@dataclass(frozen=True, slots=True)
class ExportFile:
    """One file of a month's export: its name in the directory, rows and sha256 (hex)."""

    name: str
    rows: int
    sha256: str


@dataclass(frozen=True, slots=True)
class MonthExport:
    """A month's export as ``manifest.json`` records it."""

    month: datetime
    transactions: ExportFile
    draws: ExportFile
    #: the sum of the exported journal rows' amounts
    amount: int


@dataclass(frozen=True, slots=True)
class ArchivedMonth:
    """A month detached by ``archive_month``: its rows, their sum and its draws."""

    month: datetime
    transactions: int
    amount: int
    draws: int
    archived_at: datetime


def month_name(month: datetime) -> str:
    """``2025_01``: how the partitions and the export files name a month."""
    return month.astimezone(UTC).strftime("%Y_%m")


def archivable_months(conn: psycopg.Connection[Any], before: datetime) -> list[datetime]:
    """The months before ``before`` whose journal partition is still attached, oldest first."""
    return [row[0] for row in _run(conn, _MONTHS, (before,))]


def export_month(conn: psycopg.Connection[Any], month: datetime, directory: Path) -> MonthExport:
    """Copy the month's partitions into ``directory`` (in one snapshot) and record the
    files in its manifest; a previous export of the month is replaced."""
    name = month_name(month)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with conn.transaction():
            conn.execute("set transaction isolation level repeatable read, read only")
            transactions, amount = _copy(
                conn,
                sql.SQL(
                    "select row_to_json(t)::text, t.amount from credit_private.{} as t"
                    " order by t.account_id, t.seq"
                ).format(sql.Identifier(f"credit_transactions_p{name}")),
                directory / f"credit_transactions_{name}.jsonl",
            )
            draws, _ = _copy(
                conn,
                sql.SQL(
                    "select row_to_json(d)::text, d.amount from credit_private.{} as d"
                    " order by d.account_id, d.transaction_id, d.id"
                ).format(sql.Identifier(f"credit_grant_draws_p{name}")),
                directory / f"credit_grant_draws_{name}.jsonl",
            )
    except psycopg.Error as exc:
        raise _error(exc) from exc
    export = MonthExport(month, transactions, draws, amount)
    manifest = _read_manifest(directory)
    manifest["months"][name] = {
        "month": month.isoformat(),
        "transactions": asdict(transactions),
        "draws": asdict(draws),
        "amount": amount,
    }
    _write_manifest(directory, manifest)
    return export


def recorded_export(directory: Path, month: datetime) -> MonthExport | None:
    """The month's export the manifest of ``directory`` records, if any."""
    entry = _read_manifest(directory)["months"].get(month_name(month))
    if entry is None:
        return None
    try:
        return MonthExport(
            month=datetime.fromisoformat(entry["month"]),
            transactions=ExportFile(**entry["transactions"]),
            draws=ExportFile(**entry["draws"]),
            amount=int(entry["amount"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _mismatch(f"{MANIFEST} has a malformed entry for {month_name(month)}", {}) from exc


def check_export(conn: psycopg.Connection[Any], export: MonthExport, directory: Path) -> None:
    """Read the export back and compare it with its manifest and, per account, with what
    the checkpoints say the month holds; raise LedgerInconsistentError on any difference."""
    label = month_name(export.month)
    rows = _read_rows(directory, export.transactions)
    draws = _read_rows(directory, export.draws)
    held: dict[int, list[int]] = {}
    ids: set[str] = set()
    for row in rows:
        totals = held.setdefault(int(row["account_id"]), [0, 0])
        totals[0] += 1
        totals[1] += int(row["amount"])
        ids.add(str(row["id"]))
    if len(ids) != len(rows):
        raise _mismatch(f"the export of {label} repeats a journal row", {"month": label})
    if sum(total for _, total in held.values()) != export.amount:
        raise _mismatch(
            f"the journal rows of {label} do not sum to the manifest's amount", {"month": label}
        )
    strays = [d["id"] for d in draws if str(d["transaction_id"]) not in ids]
    if strays:
        raise _mismatch(
            f"{len(strays)} draws of {label} belong to no exported journal row",
            {"month": label, "draw_id": strays[0]},
        )
    expected = {
        account_id: [n, amount]
        for account_id, n, amount in _run(
            conn,
            "select account_id, transactions, amount from credit_private.archive_expectation(%s)",
            (export.month,),
        )
        if n or amount
    }
    differ = sorted(a for a in held.keys() | expected.keys() if held.get(a) != expected.get(a))
    if differ:
        raise _mismatch(
            f"the export of {label} differs from the checkpoints for {len(differ)} accounts"
            f" (first {differ[0]}: exported {held.get(differ[0])}, expected"
            f" {expected.get(differ[0])} as [rows, amount])",
            {"month": label, "accounts": len(differ), "account_id": differ[0]},
        )
    exported_draws = Counter(int(d["account_id"]) for d in draws)
    attached_draws = dict(
        _run(
            conn,
            sql.SQL(
                "select account_id, count(*) from credit_private.{} group by account_id"
            ).format(sql.Identifier(f"credit_grant_draws_p{label}")),
        )
    )
    if exported_draws != Counter(attached_draws):
        raise _mismatch(f"the draws exported for {label} differ from its partition", {})


def archive_month(conn: psycopg.Connection[Any], export: MonthExport) -> ArchivedMonth:
    """Detach the month's partitions: ``archive_month`` checks them against the checkpoints
    and the export's totals under lock first (DC133-DC135 otherwise)."""
    (row,) = _run(
        conn,
        "select month, transactions, amount, draws, archived_at"
        " from credit_private.archive_month(%s, %s, %s, %s)",
        (export.month, export.transactions.rows, export.amount, export.draws.rows),
    )
    return ArchivedMonth(*row)


def archive(
    conn: psycopg.Connection[Any],
    before: datetime,
    directory: Path,
    *,
    export_only: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> list[MonthExport | ArchivedMonth]:
    """Export, check and (unless ``export_only``) detach every attached month before
    ``before``, oldest first; an export already recorded in ``directory``'s manifest is
    checked as it is, not written again. Returns each month's export or archive."""
    done: list[MonthExport | ArchivedMonth] = []
    for month in archivable_months(conn, before):
        label = month_name(month)
        # refused before anything is written: not the oldest month, no closing checkpoints
        _run(conn, "select credit_private.check_archivable(%s)::text", (month,))
        export = recorded_export(directory, month)
        if export is None:
            progress(f"exporting {label}")
            export = export_month(conn, month, directory)
        progress(f"checking the export of {label}")
        check_export(conn, export, directory)
        if export_only:
            done.append(export)
            continue
        progress(f"detaching {label}")
        done.append(archive_month(conn, export))
    return done


# ---------------------------------------------------------------- helpers


def _copy(conn: psycopg.Connection[Any], query: sql.Composed, path: Path) -> tuple[ExportFile, int]:
    """Stream ``query``'s (json text, amount) rows into ``path``, one per line, with COPY;
    the file, and the sum of the amounts."""
    digest = hashlib.sha256()
    rows = amount = 0
    with (
        conn.cursor() as cur,
        cur.copy(sql.SQL("copy ({}) to stdout").format(query)) as copy,
        path.open("wb") as out,
    ):
        copy.set_types(["text", "int8"])
        for line, value in copy.rows():
            data = line.encode() + b"\n"
            out.write(data)
            digest.update(data)
            rows += 1
            amount += value
    return ExportFile(path.name, rows, digest.hexdigest()), amount


def _read_rows(directory: Path, file: ExportFile) -> list[dict[str, Any]]:
    """The rows of an export file, after checking its sha256 and row count."""
    path = directory / file.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _mismatch(f"cannot read {path}: {exc.strerror}", {"file": file.name}) from exc
    if hashlib.sha256(data).hexdigest() != file.sha256:
        raise _mismatch(
            f"{path} is not the file exported: its sha256 differs from {MANIFEST}'s",
            {"file": file.name},
        )
    try:
        rows = [json.loads(line) for line in data.splitlines()]
    except ValueError as exc:
        raise _mismatch(f"{path} holds a line that is not JSON", {"file": file.name}) from exc
    if len(rows) != file.rows:
        raise _mismatch(f"{path} does not hold {file.rows} rows", {"file": file.name})
    return rows


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.exists():
        return {"format": 1, "months": {}}
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise _mismatch(f"cannot read {path}", {}) from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("months"), dict):
        raise _mismatch(f"{path} is not a ducto archive manifest", {})
    return manifest


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    path = directory / MANIFEST
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", "utf-8")
    partial.replace(path)  # never a half-written manifest


def _run(
    conn: psycopg.Connection[Any], query: str | sql.Composed, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return [tuple(row) for row in cur.fetchall()]
    except psycopg.Error as exc:
        raise _error(exc) from exc


def _mismatch(message: str, detail: dict[str, Any]) -> LedgerInconsistentError:
    """An export that does not add up: the archive's own refusal (DC135), nothing detached."""
    return LedgerInconsistentError(
        message + "; nothing was detached", code="DC135", detail=json.dumps(detail)
    )


def _error(exc: psycopg.Error) -> DuctoError:
    if exc.sqlstate is None:
        return StoreError(str(exc) or type(exc).__name__)
    diag = exc.diag
    return error_from_sqlstate(
        exc.sqlstate, diag.message_primary or str(exc), diag.message_detail, diag.message_hint
    )
