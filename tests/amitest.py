"""What the AMI tests share: the emulator's secret, which the backend reads from an environment
variable as it does in production, and a bounded wait for state no event announces."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

SECRET_ENV = "DIALER_TEST_AMI_SECRET"
SECRET = "dialerpass"


@pytest.fixture(autouse=True)
def ami_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Autouse in every module that imports it: the backend finds the emulator's secret."""
    monkeypatch.setenv(SECRET_ENV, SECRET)


async def until(pred: Callable[[], bool], limit: float = 10.0) -> None:
    """Bounded wait for a condition outside the event stream (link state, emulator journal, pool states).

    Polling is the honest tool here: neither side publishes these changes as events, and adding hooks
    to production code only for tests would be worse. The timeout bounds it; nothing is timed.
    """
    async with asyncio.timeout(limit):
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def settle(run: asyncio.Task[Any], emu: Any) -> None:
    """The end of a test's campaign against the emulator, whatever failed first: a run still going is
    cancelled and awaited (bounded), and the emulator is closed."""
    if not run.done():
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(10):
                await run
    await emu.close()
