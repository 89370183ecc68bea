"""Sync and async from one source: the sync managers and stores are generated from the
async ones by scripts/unasync.py, and each pair offers the same API.

- the committed sync code is what the generator writes from the async code today;
- each pair has the same public members, with the same signatures (an async one a
  coroutine or an async context manager where the sync one is a function or a context
  manager) and the same docstrings.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ducto import AsyncCreditManager, CreditManager
from ducto.interface import (
    AsyncCreditStore,
    AsyncHttpxSupabaseStore,
    AsyncPostgresStore,
    AsyncSupabaseStore,
    CreditStore,
    HttpxSupabaseStore,
    PostgresStore,
    SupabaseStore,
)

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [
    (CreditManager, AsyncCreditManager),
    (CreditStore, AsyncCreditStore),
    (PostgresStore, AsyncPostgresStore),
    (HttpxSupabaseStore, AsyncHttpxSupabaseStore),
    (SupabaseStore, AsyncSupabaseStore),
]


def test_the_sync_code_is_generated_from_the_async_code() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def public(cls: type) -> dict[str, Any]:
    """The members ``cls`` defines itself that a caller uses: its constructor, methods and
    properties whose names do not start with an underscore."""
    return {
        name: member
        for name, member in vars(cls).items()
        if (name == "__init__" or not name.startswith("_")) and not isinstance(member, str)
    }


def kind(member: Any) -> str:
    """What calling ``member`` gives, with ``async`` dropped: a function or a context
    manager (``contextmanager`` and ``asynccontextmanager`` keep the generator in
    ``__wrapped__``)."""
    if isinstance(member, property):
        return "property"
    wrapped = getattr(member, "__wrapped__", None)
    if inspect.isgeneratorfunction(wrapped) or inspect.isasyncgenfunction(wrapped):
        return "context manager"
    return "function"


def is_async(member: Any) -> bool:
    """A coroutine function, an async generator (``export_journal``) or an async context
    manager."""
    return (
        inspect.iscoroutinefunction(member)
        or inspect.isasyncgenfunction(member)
        or inspect.isasyncgenfunction(getattr(member, "__wrapped__", None))
    )


def unasynced(text: str) -> str:
    """``AsyncCreditStore`` -> ``CreditStore``, ``AsyncIterator`` -> ``Iterator``..."""
    return re.sub(r"\bAsync(?=[A-Z])", "", text)


@pytest.mark.parametrize(("sync", "flavour"), PAIRS, ids=[cls.__name__ for cls, _ in PAIRS])
def test_both_flavours_offer_the_same_api(sync: type, flavour: type) -> None:
    members, async_members = public(sync), public(flavour)
    assert members.keys() == async_members.keys()
    for name, member in members.items():
        other = async_members[name]
        assert kind(member) == kind(other), name
        # a constructor or a property is the same in both; every other method is awaited
        awaited = not (name == "__init__" or isinstance(member, property))
        if isinstance(member, property):
            member, other = member.fget, other.fget
        assert (is_async(member), is_async(other)) == (False, awaited), name
        assert inspect.getdoc(member) == inspect.getdoc(other), name
        assert str(inspect.signature(member)) == unasynced(str(inspect.signature(other))), name
