"""A time limit that holds even when the database has gone silent.

`asyncio.wait_for` cancels the awaited call at its deadline and then *waits for the cancellation
to finish*. asyncpg cancels a running query by sending PostgreSQL a cancel request and waiting
for the answer, so with a server that accepts nothing and answers nothing (stopped, a frozen VM,
a firewall dropping packets) the cancellation never finishes and `wait_for` never returns
(measured: still pending after 40 s with a 2 s limit; issue 13). `within` gives up on time: the
call is cancelled and left to finish its cancellation in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def within(call: Awaitable[T], seconds: float) -> T:
    """`await call`, or TimeoutError after `seconds` without waiting for its cancellation."""
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        task.add_done_callback(_consume)
        raise TimeoutError(f"no answer within {seconds:g} s")
    return task.result()


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at exit
