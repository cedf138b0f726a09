"""Shared test fixtures: a real redis-server, and a virtual-time loop for engine runs."""

import pytest
from redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

from simulations.vloop import VirtualTimeLoop


@pytest.fixture
def vrun():
    """Run a coroutine to completion in virtual time: ``result = vrun(coro)``."""
    import asyncio

    def run(coro):
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            return runner.run(coro)

    return run
