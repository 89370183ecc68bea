"""Install, inspect and maintain the ledger: setup, status, verify, checkpoint, partitions,
archive, sweep, sql export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import psycopg
import typer

from ducto import __version__, _migrations
from ducto import archive as archiving
from ducto.cli import _options
from ducto.cli._options import JsonFlag
from ducto.cli._output import count, credits, emit_json, show, stdout, table, text
from ducto.cli._session import ExitCode, Target, _message, exit_code, fail, session, stderr
from ducto.errors import DuctoError, PricingNotLoadedError, SchemaError
from ducto.manager import CreditManager
from ducto.pricing import PricingVersion


def setup(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Install ducto's schema, or upgrade it: apply the migrations the database lacks.

    Over the Supabase REST API nothing can be installed: it checks that the schema is
    current and otherwise says how to deploy it (`ducto sql export`).
    """
    with (
        session(ctx.obj, setup_embedded=False) as manager,
        stderr.status("Applying ducto's migrations"),
    ):
        result = manager.setup()
    if result.applied:
        headline = f"Applied {count(len(result.applied), 'migration')}."
    else:
        headline = "Nothing to apply."
    show(result, f"{headline} Schema version {result.schema_version}.", as_json=as_json)


def status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show the connection, the installed schema version and whether it is current.

    Exits 4 when the schema is missing or older than this ducto needs. The embedded
    database, like for every command, is brought up to date first.
    """
    target: Target = ctx.obj
    with session(target) as manager:
        installed = manager.schema_version()
        pricing = _active_pricing(manager) if installed else None
    expected = _migrations.latest_version()
    state, advice = _schema_state(installed, expected)
    report = {
        "ducto_version": __version__,
        "database": {"kind": target.kind, "where": target.describe(), "reachable": True},
        "schema": {"installed": installed, "expected": expected, "state": state},
        "pricing": pricing
        and {
            "version": pricing.version,
            "label": pricing.label,
            "created_at": pricing.created_at,
        },
    }
    if as_json:
        emit_json(report)
    else:
        stdout.print(f"ducto {__version__}, schema {expected}")
        stdout.print(f"  database  {target.describe()} (reachable)")
        stdout.print(f"  schema    {installed or 'not installed'}: {state}{advice}")
        active = (
            f"version {pricing.version}{f' ({pricing.label})' if pricing.label else ''}, "
            f"published {text(pricing.created_at)}"
            if pricing
            else "none published (ducto pricing publish FILE)"
        )
        stdout.print(f"  pricing   {active}")
    if state in ("missing", "behind"):
        raise fail(f"ducto's schema is {state}{advice}", ExitCode.NOT_READY)


def _active_pricing(manager: CreditManager) -> PricingVersion | None:
    try:
        return manager.get_pricing()
    except (PricingNotLoadedError, SchemaError):  # none published, or a schema before pricing
        return None


def _schema_state(installed: str | None, expected: str) -> tuple[str, str]:
    if installed is None:
        return "missing", " (install it: ducto setup)"
    if installed < expected:
        return "behind", f" (this ducto needs {expected}: ducto setup, or supabase db push)"
    if installed > expected:
        return "ahead", " (newer than this ducto: upgrade the ducto package)"
    return "current", ""


def verify(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(
            help="Check each account from its newest checkpoint at or before this time"
            " (ISO 8601, UTC by default), reading only the rows after it.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Recompute every ledger invariant. Exits 5 when one is broken."""
    after = _options.moment(since, "--since") if since else None
    with session(ctx.obj) as manager, stderr.status("Checking every account's invariants"):
        issues = manager.verify_ledger(since=after)
    table(
        issues,
        ("check_name", "user_id", "account_id", "expected", "actual"),
        title=f"{count(len(issues), 'broken invariant')}",
        as_json=as_json,
        empty="The ledger is consistent: every invariant holds.",
    )
    if issues:
        raise fail(f"{count(len(issues), 'broken ledger invariant')}", ExitCode.INCONSISTENT)


def checkpoint(
    ctx: typer.Context,
    month: Annotated[
        str,
        typer.Option(
            help="The month whose start is the boundary (YYYY-MM, UTC): the checkpoint closes"
            " the month before it.",
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Record every account's state at a month boundary, after verifying the month.

    The boundary must be an hour past with no transaction begun before it still running.
    Taking it again records nothing more.
    """
    period_start = _options.month(month, "--month")
    with session(ctx.obj) as manager, stderr.status("Verifying the month and taking checkpoints"):
        result = manager.take_checkpoints(period_start)
    show(
        result,
        f"At {text(result.period_start)}: {count(result.recorded, 'checkpoint')} recorded,"
        f" with {count(result.grants, 'grant balance')}; {result.kept:,} already there.",
        as_json=as_json,
    )


def partitions(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the journal's partitions: a month each, and a default one per table.

    Exits 1 when a default partition holds rows (their months have no partition), so a
    monitor can run it.
    """
    with session(ctx.obj) as manager:
        rows = manager.partitions()
    stray = sum(row.row_count for row in rows if row.month is None)
    table(
        rows,
        ("partition_name", "month", "row_count"),
        title=f"{count(len(rows), 'partition')}",
        as_json=as_json,
        empty="No partitions: the journal is not partitioned (a schema before 0.7.0).",
        caption="A month's row count is the statistics' estimate; a default partition's is"
        " exact, and should be 0.",
    )
    if stray:
        raise fail(
            f"{count(stray, 'row')} in a default partition: a month without a partition"
            ' (docs/operations.md, "Partitions")',
            ExitCode.REFUSED,
        )


def archive(
    ctx: typer.Context,
    before: Annotated[
        str,
        typer.Option(
            help="Archive every month before this one (YYYY-MM, UTC) whose partitions are"
            " still attached, oldest first.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            file_okay=False,
            help="The export's folder: a JSONL file of each month's journal rows and of its"
            " draws, and manifest.json.",
        ),
    ] = Path("archive"),
    export_only: Annotated[
        bool,
        typer.Option(
            "--export-only",
            help="Export and check the months; detach nothing (store the"
            " export, then run again without it: the export is checked, not rewritten).",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Export closed months, check the export against the checkpoints, then detach them.

    Needs a direct connection as the database owner (--db-url / DATABASE_URL). A month must
    be the oldest attached one, with the checkpoints at its end taken (ducto checkpoint).
    Exits 5, detaching nothing, when an export, a partition and the checkpoints disagree.
    The detached tables stay in credit_private until dropped (docs/operations.md, "Archive").
    """
    target: Target = ctx.obj
    if not target.db_url:
        raise fail(
            "ducto archive needs a direct PostgreSQL connection as the database owner:"
            " --db-url or DATABASE_URL",
            ExitCode.USAGE,
        )
    first = _options.month(before, "--before")
    try:
        with (
            psycopg.connect(
                target.db_url, autocommit=True, application_name="ducto archive"
            ) as conn,
            stderr.status("Archiving") as status,
        ):
            done = archiving.archive(
                conn, first, output, export_only=export_only, progress=status.update
            )
    except psycopg.OperationalError as exc:
        raise fail(f"cannot connect: {exc}", ExitCode.UNAVAILABLE) from exc
    except DuctoError as error:
        raise fail(_message(error), exit_code(error)) from error
    if as_json:
        emit_json(done)
        return
    if not done:
        stdout.print(f"No attached month before {before} to archive.")
    for item in done:
        if isinstance(item, archiving.ArchivedMonth):
            stdout.print(
                f"{item.month:%Y-%m}: archived {count(item.transactions, 'journal row')}"
                f" ({credits(item.amount)}) and {count(item.draws, 'draw')}; export in"
                f" {output}, detached tables credit_private.credit_transactions_p"
                f"{archiving.month_name(item.month)} and credit_grant_draws_p"
                f"{archiving.month_name(item.month)} to drop once it is stored."
            )
        else:
            stdout.print(
                f"{item.month:%Y-%m}: exported {count(item.transactions.rows, 'journal row')}"
                f" and {count(item.draws.rows, 'draw')} to {output}, checked; nothing detached."
            )


def sweep(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, change nothing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Expire what is left of expired grants and mark timed-out reservations."""
    with session(ctx.obj) as manager, stderr.status("Sweeping expired credits"):
        result = manager.sweep_expired_credits(dry_run=dry_run)
    verb = "Would expire" if dry_run else "Expired"
    show(
        result,
        f"{verb} {credits(result.expired_amount)} in {count(result.expired_grants, 'grant')}"
        f" and {count(result.expired_holds, 'reservation')}, over"
        f" {count(result.accounts, 'account')}.",
        as_json=as_json,
    )


sql = typer.Typer(help="ducto's SQL, for deploying it with the supabase CLI.", no_args_is_help=True)


@sql.command("export")
def export(
    project_dir: Annotated[
        Path,
        typer.Argument(
            file_okay=False, help="The Supabase project: the folder that holds supabase/."
        ),
    ],
) -> None:
    """Write ducto's migrations into PROJECT_DIR/supabase/migrations.

    `supabase db push` then deploys them along with the project's own. Files already
    there are left alone; a file of the same name with other content is an error.
    """
    if not (project_dir / "supabase").is_dir():
        raise fail(
            f"{project_dir} has no supabase/ folder: run `supabase init` there first",
            ExitCode.USAGE,
        )
    folder = project_dir / "supabase" / "migrations"
    migrations = _migrations.bundled()
    try:
        paths = [folder / f"{m.version}_{m.name}.sql" for m in migrations]
        # every conflict is found before anything is written: never a partial export
        for migration, path in zip(migrations, paths, strict=True):
            if path.exists() and path.read_text("utf-8") != migration.sql:
                raise fail(
                    f"{path} differs from ducto's migration of that name; migrations are "
                    "append-only, so ducto will not overwrite it",
                    ExitCode.REFUSED,
                )
        folder.mkdir(exist_ok=True)
        missing = [(m, p) for m, p in zip(migrations, paths, strict=True) if not p.exists()]
        for migration, path in missing:
            path.write_text(migration.sql, "utf-8")
            stdout.print(f"wrote {path}")
    except OSError as exc:
        raise fail(f"cannot write the migrations: {exc}", ExitCode.REFUSED) from exc
    stdout.print(
        f"{len(missing)} written, {len(migrations) - len(missing)} already there. Deploy: "
        "supabase db push (add --include-all if newer migrations are already applied)."
    )
