"""Writes the sync flavour of ducto's managers and stores from their async source.

Each file in ``FILES`` holds its async classes after the line ``SOURCE``; everything after
the line ``GENERATED`` (the rest of the file) is those classes turned sync by a few rules
(``async def`` -> ``def``, ``await x`` -> ``x``, ``AsyncCreditStore`` -> ``CreditStore``,
...) and formatted with ruff. So there is one source for both flavours: edit the async
code, then run::

    .venv/bin/python scripts/unasync.py            # rewrite the sync flavours
    .venv/bin/python scripts/unasync.py --check    # exit 1 when one is stale

``tests/unit/test_flavours.py`` runs the check.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = (
    "ducto/manager.py",
    "ducto/interface/base.py",
    "ducto/interface/postgres.py",
    "ducto/interface/supabase.py",
    "ducto/interface/supabase_py.py",
)
SOURCE = "# -- async source: scripts/unasync.py writes the sync flavour below from it --"
GENERATED = (
    "# -- sync flavour: generated from the async source above by scripts/unasync.py; do not edit --"
)

RULES = [
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\b([Aa])n(\s+\S*?)Async(?=[A-Z])", r"\1\2"),  # an AsyncConnection -> a Connection
        (r"\bAsync(?=[A-Z])", ""),  # AsyncCreditStore -> CreditStore, AsyncIterator -> Iterator
        (r"\basynccontextmanager\b", "contextmanager"),
        (r"\basync (def|with|for)\b", r"\1"),
        (r"\bawait ", ""),
        (r"\baclose\b", "close"),
        (r"\basyncio\.sleep\b", "time.sleep"),
        (r"\basyncio\.to_thread\(([\w.]+), ", r"\1("),  # a blocking call, run in place
        (r"\bacreate_client\b", "create_client"),  # supabase-py's async constructor
    )
]


def unasync(code: str) -> str:
    """``code`` with every rule applied, in order."""
    for pattern, replacement in RULES:
        code = pattern.sub(replacement, code)
    return code


def generate(path: Path) -> str:
    """The file at ``path`` with its sync flavour generated from its async source."""
    text = path.read_text(encoding="utf-8")
    head, generated, _ = text.partition(f"\n{GENERATED}\n")
    _, source, code = head.partition(f"\n{SOURCE}\n")
    if not (source and generated):
        raise SystemExit(f"{path}: the lines {SOURCE!r} and {GENERATED!r} are missing")
    return ruff_format(head + generated + unasync(code), path)


def ruff_format(code: str, path: Path) -> str:
    """``code`` as ``ruff format`` writes it (the project's settings apply)."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(path), "-"],
        input=code,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ruff format {path}: {done.stderr}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description="Write the sync flavours from the async source.")
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = parser.parse_args()
    stale = 0
    for name in FILES:
        path = ROOT / name
        current, expected = path.read_text(encoding="utf-8"), generate(path)
        if current == expected:
            continue
        if args.check:
            stale += 1
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                f"{name} (committed)",
                f"{name} (generated)",
            )
            sys.stdout.writelines(diff)
        else:
            path.write_text(expected, encoding="utf-8")
            print(f"wrote {name}")
    if stale:
        print(f"{stale} stale: run .venv/bin/python scripts/unasync.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
