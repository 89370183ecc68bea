"""`make demo`: the whole lifecycle on the embedded PostgreSQL, checked by the demo itself."""

from __future__ import annotations

import subprocess

from helpers_process import ROOT


def test_make_demo_runs_every_step() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for title in (
        "Publish pricing", "feature gate", "Replay", "Refusal", "team pool", "sweep",
        "Spend report", "alert fires once", "auto top-up request fires once", "statement",
        "Verify",
    ):  # fmt: skip
        assert title in done.stdout
    assert "Every step did what the ledger promises." in done.stdout
