"""``ducto pricing ...``: publish a pricing config, show one, list every version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ducto.cli._options import JsonFlag
from ducto.cli._output import credits, emit_json, stdout, table, text
from ducto.cli._session import _message, exit_code, fail, session
from ducto.errors import DuctoError
from ducto.pricing import ModelRates, PricingConfigData, PricingVersion

app = typer.Typer(help="Publish a pricing config, show one, list every version.")

#: The rates a table shows, in the order of the config reference (docs/pricing.md).
RATES = tuple(ModelRates.model_fields)


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
    rates = Table(title=f"Rates in {unit} (tokens: per 1M)", title_justify="left")
    rates.add_column("model", no_wrap=True)
    for name in RATES:
        rates.add_column(name.replace("_", " "), justify="right")
    entries: list[tuple[str, ModelRates]] = [(m.model, m) for m in config.models]
    if config.default is not None:
        entries.append(("(any other model)", config.default))
    for model, entry in entries:
        rates.add_row(model, *(f"{getattr(entry, name):f}" for name in RATES))
    stdout.print(rates)
    if config.fixed_jobs:
        jobs = ", ".join(f"{job} {credits(cost)}" for job, cost in config.fixed_jobs.items())
        stdout.print(f"Fixed-cost jobs: {jobs}.", soft_wrap=True)


def _summary(pricing: PricingVersion) -> dict[str, object]:
    return {
        "version": pricing.version,
        "label": pricing.label,
        "is_active": pricing.is_active,
        "created_at": pricing.created_at,
    }
