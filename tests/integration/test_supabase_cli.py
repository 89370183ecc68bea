"""What `supabase start` would use, checked with the pinned CLI where no Docker is needed.

``supabase start`` runs Supabase's own containers; it cannot run here. What it reads can be
checked all the same:

- every key of ``supabase/config.toml`` is one the pinned CLI knows: the template its own
  ``supabase init`` and ``supabase functions new`` write (set or commented out) holds it;
- the CLI loads the config and finds the stack's database, which ``supabase db push`` set
  up from the same migrations ``supabase start`` applies, up to date (``--dry-run``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from helpers_process import ROOT, SUPABASE, run

# `key = value` or `[table]`, set or commented out ("# key = value")
_KEY = re.compile(r"^#?\s*([A-Za-z0-9_]+)\s*=")
_TABLE = re.compile(r"^#?\s*\[([A-Za-z0-9_.-]+)\]\s*$")


def template_keys(text: str) -> set[str]:
    """Every dotted key the CLI's template names, commented out or not."""
    keys: set[str] = set()
    table = ""
    for line in text.splitlines():
        if found := _TABLE.match(line.strip()):
            table = found.group(1)
            parts = table.split(".")  # [a.b] names the table a too
            keys.update(".".join(parts[: n + 1]) for n in range(len(parts)))
        elif found := _KEY.match(line.strip()):
            keys.add(f"{table}.{found.group(1)}" if table else found.group(1))
    return keys


def config_keys(config: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Every dotted key of a parsed config, tables included."""
    for name, value in config.items():
        key = f"{prefix}{name}"
        yield key
        if isinstance(value, Mapping):
            yield from config_keys(value, f"{key}.")


def test_every_config_key_is_one_the_pinned_cli_knows(tmp_path: Path) -> None:
    run([str(SUPABASE), "init", "--yes"], cwd=tmp_path)
    run([str(SUPABASE), "functions", "new", "probe"], cwd=tmp_path)
    known = template_keys((tmp_path / "supabase" / "config.toml").read_text(encoding="utf-8"))
    config = tomllib.loads((ROOT / "supabase" / "config.toml").read_text(encoding="utf-8"))
    functions = config.get("functions", {})
    assert set(functions) == {
        path.parent.name for path in (ROOT / "supabase" / "functions").glob("*/index.ts")
    }
    # each function's table, as the one the CLI writes for a new function
    probe = {"functions": {"probe": {k: v for f in functions.values() for k, v in f.items()}}}
    keys = set(config_keys({k: v for k, v in config.items() if k != "functions"}))
    unknown = (keys | set(config_keys(probe))) - known
    assert not unknown, f"keys the pinned CLI does not know: {sorted(unknown)}"
    assert config["db"]["major_version"] == 15  # the local stack's server, and start's image


def test_the_cli_loads_the_config_and_finds_the_stack_up_to_date(database_url: str) -> None:
    out = run([str(SUPABASE), "db", "push", "--dry-run", "--db-url", database_url])
    assert "Remote database is up to date." in out  # (DRY RUN goes to stderr)
