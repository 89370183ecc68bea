"""``ducto pricing init`` writes the sample that ships in the package, and ``ducto pricing
show`` fits 80 columns; in process, with no database (the store answers one pricing)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ducto import PricingConfigData
from ducto._rpc import RpcCall
from ducto.cli import _output, _session, app
from ducto.cli.pricing import sample

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pricing.json"


def ducto(*args: str, code: int = 0) -> tuple[str, str]:
    result = CliRunner().invoke(app, list(args), env={"DATABASE_URL": "postgresql://db/x"})
    assert result.exit_code == code, result.stdout + result.stderr
    return result.stdout, result.stderr


def test_the_shipped_sample_is_the_example() -> None:
    # examples/pricing.json is what the docs and the demo read in a checkout
    assert sample() == EXAMPLE.read_bytes()
    assert PricingConfigData.parse(sample()).fixed_jobs == {
        "roadmap_generation": 50,
        "topic_generation": 10,
    }


def test_init_writes_the_sample_and_never_overwrites_without_force(tmp_path: Path) -> None:
    target = tmp_path / "pricing.json"
    out, _ = ducto("pricing", "init", str(target))
    assert target.read_bytes() == sample()
    assert f"ducto pricing publish {target}" in out

    target.write_text("{}")
    _, err = ducto("pricing", "init", str(target), code=1)
    assert err == f"error: {target} exists: give --force to overwrite it\n"
    assert target.read_text() == "{}"
    ducto("pricing", "init", str(target), "--force")
    assert target.read_bytes() == sample()

    ducto("pricing", "init", str(tmp_path), code=2)  # a folder is not a file
    _, err = ducto("pricing", "init", str(tmp_path / "no" / "such" / "dir.json"), code=1)
    assert err.startswith("error: cannot write ") and err.count("\n") == 1


def test_init_writes_pricing_json_here_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ducto("pricing", "init")
    assert json.loads((tmp_path / "pricing.json").read_bytes()) == json.loads(sample())


class Store:
    """Answers ``credit_get_pricing`` with the sample, version 3."""

    def open(self, target: object, stack: object) -> Store:
        return self

    def call(self, call: RpcCall) -> list[dict[str, Any]]:
        assert call.function == "credit_get_pricing"
        row = {"version": 3, "label": "sample", "config": json.loads(sample())}
        return [row | {"is_active": True, "created_at": datetime(2026, 1, 1, tzinfo=UTC)}]


def test_show_fits_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_session, "_open_store", Store().open)
    monkeypatch.setattr(_output.stdout, "width", 80)
    out, _ = ducto("pricing", "show")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in out  # nothing cut
    # the headers, over the lines between the title and the rule under them
    top = next(i for i, line in enumerate(lines) if line.startswith("Rates in USD per 1M"))
    rule = next(i for i, line in enumerate(lines) if i > top and "───" in line)
    header = " ".join(lines[top + 1 : rule]).split()
    for word in ("model", "input", "output", "cached", "cache", "creation", "1h", "reasoning"):
        assert word in header
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith(" claude")}
    assert rows["claude-opus-4*"] == ["15", "75", "1.5", "18.75", "30", "75"]
    # per-call rates: only the models that have one
    assert [line.split() for line in lines if "web-search" in line] == [
        ["web-search", "0", "0", "0", "0", "0", "0"],
        ["web-search", "0.01", "0"],
    ]
    assert "tool call" in out and "request" in out
