"""Which database a command talks to, and how a failure becomes one line and an exit code.

Every command runs inside :func:`session`: it opens the store the options name, hands the
command a :class:`~ducto.CreditManager`, closes the store afterwards, and turns a ducto
error into ``error: <message>`` on stderr and the exit code of its kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import typer
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.markup import escape

from ducto.embedded import POSTGRES_MAJOR, EmbeddedPostgres, default_data_dir
from ducto.errors import (
    DuctoError,
    LedgerInconsistentError,
    PermissionDeniedError,
    PricingNotLoadedError,
    SchemaError,
    StoreError,
)
from ducto.interface import HttpxSupabaseStore, PostgresStore
from ducto.manager import CreditManager

#: Progress and errors go to stderr, so stdout carries only the result (or its JSON).
stderr = Console(stderr=True)


class ExitCode(IntEnum):
    """The exit codes of every ``ducto`` command (docs/cli.md lists them)."""

    OK = 0
    #: the ledger refused the operation: insufficient credits, unknown id, bad value...
    REFUSED = 1
    #: the command line is wrong (click's own code)
    USAGE = 2
    #: the database cannot be reached, refused the credentials, or failed unexpectedly
    UNAVAILABLE = 3
    #: ducto's schema (or an active pricing) is missing or older than this ducto needs
    NOT_READY = 4
    #: ``ducto verify`` found broken invariants (or ``ducto checkpoint`` refused for them)
    INCONSISTENT = 5
    #: interrupted (Ctrl-C), as shells report SIGINT
    INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Target:
    """The database named by the global options; the first that is set wins."""

    db_url: str | None
    supabase_url: str | None
    service_role_key: str | None
    data_dir: Path | None
    #: a read replica of the database, for the history reads (stats, export)
    read_db_url: str | None = None
    #: a read replica's REST API, for the history reads (stats, export)
    read_supabase_url: str | None = None

    @property
    def kind(self) -> str:
        """``postgres``, ``supabase`` or ``embedded``."""
        if self.db_url:
            return "postgres"
        if self.supabase_url:
            return "supabase"
        return "embedded"

    def describe(self) -> str:
        """Where the data is, for a person (never a password or a key)."""
        if self.db_url:
            info = conninfo_to_dict(self.db_url)
            where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
            return f"PostgreSQL {info.get('user', '')}@{where}/{info.get('dbname', '')}"
        if self.supabase_url:
            return f"Supabase REST API {self.supabase_url.rstrip('/')}"
        return f"embedded PostgreSQL {POSTGRES_MAJOR} in {self.data_dir or default_data_dir()}"


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Print ``error: message`` (one line) on stderr; the Exit to raise for ``code``."""
    line = escape(" ".join(message.split()))  # a value like '[red]' is text, not a style
    stderr.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(int(code))


def exit_code(error: DuctoError) -> ExitCode:
    """The exit code for a ducto error."""
    if isinstance(error, SchemaError | PricingNotLoadedError):
        return ExitCode.NOT_READY
    if isinstance(error, PermissionDeniedError | StoreError):
        return ExitCode.UNAVAILABLE
    if isinstance(error, LedgerInconsistentError):
        return ExitCode.INCONSISTENT
    return ExitCode.REFUSED


def _message(error: DuctoError) -> str:
    text = f"{error.message} [{error.code}]" if error.code else error.message
    if isinstance(error, SchemaError) and error.code != "DC100":
        text += " (ducto's schema is not installed here: run `ducto setup`)"
    return text


@contextmanager
def session(target: Target, *, setup_embedded: bool = True) -> Iterator[CreditManager]:
    """A CreditManager on ``target``, closed afterwards; errors become exit codes.

    The embedded database is ducto's alone, so its schema is brought up to date on open
    (``setup_embedded=False`` leaves that to the caller).
    """
    try:
        with ExitStack() as stack:
            manager = CreditManager(_open_store(target, stack))
            if target.kind == "embedded" and setup_embedded:
                manager.setup()
            yield manager
    except DuctoError as error:
        raise fail(_message(error), exit_code(error)) from error
    except KeyboardInterrupt:
        raise fail("interrupted", ExitCode.INTERRUPTED) from None


def _open_store(target: Target, stack: ExitStack) -> PostgresStore | HttpxSupabaseStore:
    _check_replica(target)
    if target.supabase_url and not target.db_url:
        if not target.service_role_key:
            raise StoreError("SUPABASE_URL is set but SUPABASE_SERVICE_ROLE_KEY is not")
        http = HttpxSupabaseStore(
            target.supabase_url, target.service_role_key, read_url=target.read_supabase_url
        )
        stack.callback(http.close)
        return http
    url = target.db_url
    if url is None:
        with stderr.status(f"Starting the {target.describe()}"):
            embedded = EmbeddedPostgres(target.data_dir or default_data_dir())
            # registered first: an interrupted start still stops what it started
            stack.callback(embedded.stop)
            url = embedded.start()
    # a wrong URL fails at the first call, with the server's reason (StoreConnectionError)
    store = PostgresStore(url, max_size=2, read_dsn=target.read_db_url)
    stack.callback(store.close)
    return store


def _check_replica(target: Target) -> None:
    """A read replica must be of the kind of database the command talks to."""
    if target.read_db_url and target.kind != "postgres":
        raise StoreError(
            "DUCTO_READ_DATABASE_URL (--read-db-url) is a replica of a PostgreSQL database:"
            " it needs DATABASE_URL (--db-url)"
        )
    if target.read_supabase_url and target.kind != "supabase":
        raise StoreError(
            "DUCTO_READ_SUPABASE_URL (--read-supabase-url) is a replica's REST API:"
            " it needs SUPABASE_URL (--supabase-url) and no DATABASE_URL"
        )
