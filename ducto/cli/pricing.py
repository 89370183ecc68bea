"""``ducto pricing ...``: publish a pricing config, show one, list every version."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from ducto.cli._options import JsonFlag
from ducto.cli._output import count, credits, emit_json, stdout, table, text
from ducto.cli._session import ExitCode, _message, exit_code, fail, session
from ducto.errors import DuctoError
from ducto.pricing import ModelRates, PricingConfigData, PricingVersion

app = typer.Typer(
    help="Start from a sample pricing, publish it, show a version, list them all.",
    no_args_is_help=True,
)

#: The rates per 1M tokens and the rates per call, in the order of the config reference
#: (docs/pricing.md); headers broken over lines so that the table fits 80 columns.
TOKEN_RATES = {
    "input": "input",
    "output": "output",
    "cached_input": "cached\ninput",
    "cache_creation": "cache\ncreation",
    "cache_creation_1h": "cache\ncreation\n1h",
    "reasoning": "reasoning",
}
CALL_RATES = {"tool_call": "tool call", "request": "request"}
assert (*TOKEN_RATES, *CALL_RATES) == tuple(ModelRates.model_fields)


def sample() -> bytes:
    """The sample pricing config that ships with the package."""
    return resources.files("ducto").joinpath("data", "pricing.json").read_bytes()


@app.command()
def init(
    file: Annotated[
        Path, typer.Argument(dir_okay=False, help="Where to write it.", show_default=True)
    ] = Path("pricing.json"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
) -> None:
    """Write a sample pricing config to FILE, to edit and then publish.

    It prices a few OpenAI, Anthropic and Google models in USD, converted at 1,000 credits
    per USD plus 20%, and two fixed-cost jobs (docs/pricing.md explains every field).
    """
    config = PricingConfigData.parse(sample())
    try:
        with file.open("wb" if force else "xb") as out:
            out.write(sample())
    except FileExistsError:
        raise fail(f"{file} exists: give --force to overwrite it", ExitCode.REFUSED) from None
    except OSError as exc:
        raise fail(f"cannot write {file}: {exc}", ExitCode.REFUSED) from exc
    stdout.print(
        f"Wrote {file}: a sample pricing of {count(len(config.models), 'model')} and "
        f"{count(len(config.fixed_jobs), 'fixed-cost job')}. Edit it, then publish it: "
        f"ducto pricing publish {file}",
        soft_wrap=True,
    )


@app.command()
def publish(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A pricing config (JSON).")
    ],
    label: Annotated[str | None, typer.Option(help="A name for this version.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Publish FILE as a new pricing version, active at once for every client."""
    # the file is checked before any database is opened (or the embedded one started)
    try:
        config = PricingConfigData.parse(file.read_bytes())
    except DuctoError as error:
        raise fail(f"{file}: {_message(error)}", exit_code(error)) from error
    with session(ctx.obj) as manager:
        manager.publish_pricing(config, label)
        assert manager.engine is not None and manager.engine.version is not None
        # the version this publish made, even if another publish followed it
        published = manager.get_pricing(manager.engine.version)
    _show(published, as_json, f"Published pricing version {published.version}; it is active.")


@app.command()
def show(
    ctx: typer.Context,
    version: Annotated[
        int | None, typer.Option(min=1, help="A published version (default: the active one).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show a pricing version: its settings, every model's rates, the fixed-cost jobs."""
    with session(ctx.obj) as manager:
        pricing = manager.get_pricing(version)
    state = "active" if pricing.is_active else "not active"
    _show(pricing, as_json, f"Pricing version {pricing.version} ({state}).")


@app.command()
def history(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List every published pricing version, newest (the active one) first."""
    with session(ctx.obj) as manager:
        versions = manager.pricing_versions()
    table(
        versions,
        ("version", "label", "is_active", "created_at"),
        title="Pricing versions",
        as_json=as_json,
        empty="No pricing has been published: ducto pricing publish FILE",
    )


def _show(pricing: PricingVersion, as_json: bool, headline: str) -> None:
    if as_json:
        emit_json({**_summary(pricing), "config": pricing.config.to_json()})
        return
    config = pricing.config
    stdout.print(headline, soft_wrap=True)
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="dim")
    summary.add_column()
    for name, value in _summary(pricing).items():
        summary.add_row(name.replace("_", " "), text(value))
    unit = "USD" if config.unit == "usd" else "credits"
    if config.unit == "usd":
        summary.add_row(
            "conversion", f"{config.credits_per_usd:,} credits per USD, +{config.markup:%}"
        )
    summary.add_row("rounding", config.rounding)
    summary.add_row("floor", credits(config.min_balance))
    stdout.print(summary)
    entries: list[tuple[str, ModelRates]] = [(m.model, m) for m in config.models]
    if config.default is not None:
        entries.append(("(any other model)", config.default))
    stdout.print(_rates(f"Rates in {unit} per 1M tokens", entries, TOKEN_RATES))
    # most models have no per-call rates: only those that do are listed
    per_call = [(m, e) for m, e in entries if any(getattr(e, name) for name in CALL_RATES)]
    if per_call:
        stdout.print(_rates(f"Rates in {unit} per call", per_call, CALL_RATES))
    if config.fixed_jobs:
        jobs = ", ".join(f"{job} {credits(cost)}" for job, cost in config.fixed_jobs.items())
        stdout.print(f"Fixed-cost jobs: {jobs}.", soft_wrap=True)


def _rates(title: str, entries: list[tuple[str, ModelRates]], rates: dict[str, str]) -> Table:
    # no vertical rules and headers over lines: every rate fits 80 columns; a long model
    # name folds rather than push the rates off the screen
    out = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    out.add_column("model", overflow="fold", vertical="bottom")
    for header in rates.values():
        out.add_column(header, justify="right", no_wrap=True)
    for model, entry in entries:
        out.add_row(model, *(f"{getattr(entry, name):f}" for name in rates))
    return out


def _summary(pricing: PricingVersion) -> dict[str, object]:
    return {
        "version": pricing.version,
        "label": pricing.label,
        "is_active": pricing.is_active,
        "created_at": pricing.created_at,
    }
