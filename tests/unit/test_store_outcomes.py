"""What a store's error says about a call's outcome after faults, without services.

A keyed call is retried when the gateway or PostgREST turns it away (502, 503, 504) as
after a lost connection; once an attempt went out and got no answer, the final error
says that the call may or may not have taken effect, whatever a later attempt met.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import httpx
import psycopg
import pytest
from psycopg_pool import PoolTimeout

from ducto import StoreError
from ducto._rpc import RpcCall
from ducto.errors import StoreConnectionError
from ducto.interface import AsyncHttpxSupabaseStore, HttpxSupabaseStore, PostgresStore

KEYED = RpcCall("credit_add_credits", {"p_user_id": "u", "p_amount": 1}, retry_safe=True)
UNKEYED = RpcCall("credit_add_credits", {"p_user_id": "u", "p_amount": 1})
UNKNOWN = "the call may or may not have taken effect"

#: One step of a fake server: an HTTP status to answer, or a transport error to raise.
Step = int | type[httpx.TransportError]


def http_call(flavour: str, steps: list[Step], call: RpcCall) -> tuple[Any, int]:
    """Run ``call`` through an HTTP store whose server plays ``steps``, one per request;
    return the rows (or the error raised) and the number of requests sent."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        step = steps[len(sent) - 1]
        if isinstance(step, int):
            return httpx.Response(step, json={} if step == 200 else {"message": "down"})
        raise step("fault", request=request)

    transport = httpx.MockTransport(handler)
    try:
        if flavour == "sync":
            with httpx.Client(transport=transport) as client:
                result: Any = HttpxSupabaseStore("http://x", "k", client=client).call(call)
        else:

            async def run() -> Any:
                async with httpx.AsyncClient(transport=transport) as client:
                    return await AsyncHttpxSupabaseStore("http://x", "k", client=client).call(call)

            result = asyncio.run(run())
    except StoreError as exc:
        result = exc
    return result, len(sent)


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return cast(str, request.param)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_http_a_keyed_call_turned_away_is_sent_again(flavour: str, status: int) -> None:
    assert http_call(flavour, [status, 200], KEYED) == ([{}], 2)
    # a call without a key is not: after a 502 or 504 the request may have run
    error, sent = http_call(flavour, [status, 200], UNKEYED)
    assert isinstance(error, StoreError) and sent == 1
    assert error.message.endswith(UNKNOWN) == (status != 503)


@pytest.mark.parametrize(
    ("steps", "unknown"),
    [([502, 503, 503], True), ([503, 503, 504], True), ([503, 503, 503], False)],
)
def test_http_turned_away_to_the_end_says_whether_an_attempt_may_have_run(
    flavour: str, steps: list[Step], unknown: bool
) -> None:
    error, sent = http_call(flavour, steps, KEYED)
    assert isinstance(error, StoreError) and sent == 3
    assert error.message.startswith("HTTP 50")
    assert error.message.endswith(UNKNOWN) == unknown


@pytest.mark.parametrize("lost", [httpx.ReadError, httpx.RemoteProtocolError, 502, 504])
def test_http_no_connection_after_an_unanswered_attempt_leaves_the_outcome_unknown(
    flavour: str, lost: Step
) -> None:
    error, sent = http_call(flavour, [lost, httpx.ConnectError, httpx.ConnectError], KEYED)
    assert sent == 3
    assert isinstance(error, StoreError) and not isinstance(error, StoreConnectionError)
    assert error.message.endswith(UNKNOWN)


@pytest.mark.parametrize("first", [httpx.ConnectError, 503])
def test_http_no_attempt_reached_the_database_so_nothing_was_sent(
    flavour: str, first: Step
) -> None:
    error, _ = http_call(flavour, [first, httpx.ConnectError, httpx.ConnectError], KEYED)
    assert isinstance(error, StoreConnectionError)


# ---------------------------------------------------------------- psycopg


class LosingPool:
    """A pool whose first connection is lost mid-call, and which then has none to give."""

    timeout = 0.5

    def __init__(self) -> None:
        self.handed = 0

    @contextmanager
    def connection(self) -> Iterator[LosingPool]:
        self.handed += 1
        if self.handed > 1:
            raise PoolTimeout("couldn't get a connection after 0.50 sec")
        yield self

    @contextmanager
    def cursor(self, row_factory: Any = None) -> Iterator[LosingPool]:
        yield self

    def execute(self, query: str, params: dict[str, Any]) -> None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")


def psycopg_call(call: RpcCall) -> tuple[StoreError, int]:
    pool = LosingPool()
    with pytest.raises(StoreError) as caught:
        PostgresStore(pool=cast(Any, pool)).call(call)
    return caught.value, pool.handed


def test_psycopg_no_connection_for_the_retry_of_a_lost_call_leaves_the_outcome_unknown() -> None:
    error, handed = psycopg_call(KEYED)
    assert handed == 2
    assert not isinstance(error, StoreConnectionError)
    assert error.message == (
        f"credit_add_credits: connection lost, and none came free within 0.5 s; {UNKNOWN}"
    )
    assert isinstance(error.__cause__, PoolTimeout)


def test_psycopg_a_lost_call_that_is_not_retried_leaves_the_outcome_unknown() -> None:
    error, handed = psycopg_call(UNKEYED)
    assert handed == 1
    assert error.message == (
        f"credit_add_credits: server closed the connection unexpectedly; {UNKNOWN}"
    )
    assert isinstance(error.__cause__, psycopg.OperationalError)
