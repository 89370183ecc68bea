"""The README's and the docs' examples run as written.

Every ```python block of README.md and docs/*.md runs on its own, in a fresh Python
process, in a fresh folder where ``ducto pricing init`` wrote ``pricing.json``, with the
stack's ``SUPABASE_URL`` and ``SUPABASE_SERVICE_ROLE_KEY`` and a ``DATABASE_URL`` of a fresh
database with ducto's schema (so the examples' fixed ids and keys never meet another
test's). A block that begins with ``# Sketch:`` needs a model provider's client or file:
it is compiled, not run (README.md, "Documentation", says so to the reader).

The README's ``ducto`` commands run the same way on a fresh embedded database, as on a
new machine after ``make demo``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers_process import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: a fenced block, maybe indented (inside a list item), up to the fence that closes it
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<code>.*?)^(?P=indent)```$", re.M | re.S)
SKETCH = "# Sketch:"
BIN = Path(sys.executable).parent
#: what picks the database; each run sets its own
CONNECTION = ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "DUCTO_DATA_DIR")


def blocks(lang: str) -> Iterator[tuple[Path, int, str]]:
    """Each ``lang`` block of the pages: its page, the line of its fence, its code."""
    for page in PAGES:
        text = page.read_text("utf-8")
        for fence in FENCE.finditer(text):
            if fence["lang"] == lang:
                line = text.count("\n", 0, fence.start()) + 1
                yield page, line, textwrap.dedent(fence["code"])


PYTHON = [
    pytest.param(code, id=f"{page.relative_to(ROOT)}:{line}")
    for page, line, code in blocks("python")
]


def environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONNECTION}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `ducto`, as after make demo
    return env | settings


def run(args: list[str], folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, cwd=folder, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, f"{shlex.join(args)}: {done.stdout}{done.stderr}"
    return done


@pytest.mark.parametrize("code", PYTHON)
def test_python_example_runs_as_written(
    code: str,
    new_database: Callable[..., str],
    supabase_url: str,
    service_role_key: str,
    tmp_path: Path,
) -> None:
    if code.startswith(SKETCH):
        compile(code, "sketch", "exec")  # not run: at least it is Python
        return
    env = environment(
        DATABASE_URL=new_database(migrated=True),
        SUPABASE_URL=supabase_url,
        SUPABASE_SERVICE_ROLE_KEY=service_role_key,
    )
    run(["ducto", "pricing", "init"], tmp_path, env)
    (tmp_path / "example.py").write_text(code, "utf-8")
    run([sys.executable, "example.py"], tmp_path, env)


def test_every_page_is_read_and_sketches_stay_rare() -> None:
    found = [code for _, _, code in blocks("python")]
    assert len(found) >= 8
    assert sum(code.startswith(SKETCH) for code in found) <= 2


def test_readme_commands_run_on_a_fresh_machine(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("## Operate it without Python", 1)[1]
    commands = next(FENCE.finditer(section))["code"]
    env = environment(DUCTO_DATA_DIR=str(tmp_path / "pgdata"))
    outputs = {}
    for line in commands.splitlines():
        args = shlex.split(line, comments=True)
        outputs[args[1]] = run(args, tmp_path, env).stdout
    assert "status" in outputs and "verify" in outputs
    # the first command on a fresh machine finds the schema installed and current
    assert re.search(r"schema +\d+: current", outputs["status"]), outputs["status"]
    assert (tmp_path / "pricing.json").is_file()
