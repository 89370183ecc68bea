"""The ``ducto`` command: operate the ledger without writing Python.

Every command goes through :class:`~ducto.CreditManager`, on the database the global
options name: ``--db-url`` / ``DATABASE_URL`` (PostgreSQL, psycopg), else
``--supabase-url`` / ``SUPABASE_URL`` with ``SUPABASE_SERVICE_ROLE_KEY`` (the Supabase
REST API), else the embedded PostgreSQL in ``--data-dir`` / ``DUCTO_DATA_DIR``.
``--read-db-url`` / ``DUCTO_READ_DATABASE_URL`` (or ``--read-supabase-url`` /
``DUCTO_READ_SUPABASE_URL``) names a read replica that ``stats`` and ``export`` read from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ducto import __version__
from ducto.cli import credits, events, export, limits, operate, pricing, stats, stripe, topup
from ducto.cli._command import Ducto
from ducto.cli._session import Target

app = typer.Typer(
    name="ducto",
    help="Operate ducto's credit ledger: install it, charge credits, report spend, check it.",
    no_args_is_help=True,
    add_completion=False,
    cls=Ducto,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"ducto {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    db_url: Annotated[
        str | None,
        typer.Option(
            envvar="DATABASE_URL", help="PostgreSQL URL of the database.", show_default=False
        ),
    ] = None,
    supabase_url: Annotated[
        str | None,
        typer.Option(
            envvar="SUPABASE_URL", help="Supabase project URL (REST API).", show_default=False
        ),
    ] = None,
    service_role_key: Annotated[
        str | None,
        typer.Option(
            envvar="SUPABASE_SERVICE_ROLE_KEY",
            help="The project's service-role key (prefer the environment variable).",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="DUCTO_DATA_DIR",
            help="The embedded database's folder, used when no database is given.",
            show_default="~/.local/share/ducto/pgdata",
        ),
    ] = None,
    read_db_url: Annotated[
        str | None,
        typer.Option(
            envvar="DUCTO_READ_DATABASE_URL",
            help="PostgreSQL URL of a read replica for stats and exports (with --db-url).",
            show_default=False,
        ),
    ] = None,
    read_supabase_url: Annotated[
        str | None,
        typer.Option(
            envvar="DUCTO_READ_SUPABASE_URL",
            help="REST API URL of a read replica for stats and exports (with --supabase-url).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Operate ducto's credit ledger: install it, charge credits, report spend, check it."""
    ctx.obj = Target(
        db_url, supabase_url, service_role_key, data_dir, read_db_url, read_supabase_url
    )


app.command()(operate.setup)
app.command()(operate.status)
app.command()(operate.verify)
app.command()(operate.checkpoint)
app.command()(operate.partitions)
app.command()(operate.archive)
app.command()(operate.sweep)
app.add_typer(operate.sql, name="sql")
app.add_typer(pricing.app, name="pricing")
app.add_typer(credits.app, name="credits")
app.command()(stats.stats)
app.add_typer(export.app, name="export")
app.add_typer(events.app, name="events")
app.add_typer(limits.app, name="limits")
app.add_typer(stripe.app, name="stripe")
app.add_typer(topup.app, name="topup")


def main() -> None:
    """The console script's entry point."""
    app()
