"""The store protocols: what :class:`~ducto.manager.CreditManager` needs of an adapter."""

from __future__ import annotations

from typing import Any, Protocol

from ducto._rpc import RpcCall
from ducto.models import SetupResult


# -- async source: scripts/unasync.py writes the sync flavour below from it --
class AsyncCreditStore(Protocol):
    """Sends one RPC call and returns its result rows (one mapping per row)."""

    async def call(self, call: RpcCall) -> list[dict[str, Any]]:
        """Run ``call`` in one transaction; raise a :class:`~ducto.errors.DuctoError`."""
        ...

    async def setup(self) -> SetupResult:
        """Install or check ducto's schema (see the store's own documentation)."""
        ...


# -- sync flavour: generated from the async source above by scripts/unasync.py; do not edit --
class CreditStore(Protocol):
    """Sends one RPC call and returns its result rows (one mapping per row)."""

    def call(self, call: RpcCall) -> list[dict[str, Any]]:
        """Run ``call`` in one transaction; raise a :class:`~ducto.errors.DuctoError`."""
        ...

    def setup(self) -> SetupResult:
        """Install or check ducto's schema (see the store's own documentation)."""
        ...
