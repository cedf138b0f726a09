"""A real redis-server for the tests: started on a free loopback port, never mocked.

If the binary is missing the fixture fails loudly (``.ci/run`` installs it from
Debian packages); nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulations.redis_proc import RedisServer
from simulations.redis_proc import free_port as _free_port

__all__ = ["RedisServer", "_free_port", "redis_server", "redis_url"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A URL to an empty database on the shared test server."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url
