"""Running the repository's commands from a test: the scripts, the supabase CLI, ducto."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]
SUPABASE = ROOT / "node_modules" / ".bin" / "supabase"


def run(args: list[str], cwd: Path = ROOT) -> str:
    """Run a command that must succeed; its stdout."""
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def install_test_clock(url: str) -> None:
    """Give a test database the clock the tests move with ``ducto.now`` (tests/test-clock.sql).

    An installed ledger's clock is ``now()``; migrations that define the clock replace this
    one, so a test installs it again after ``setup()``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((ROOT / "tests" / "test-clock.sql").read_text("utf-8").encode())
