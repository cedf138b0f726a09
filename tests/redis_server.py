"""A real redis-server for the tests: started on a free loopback port, never mocked.

If the binary is missing the fixture fails loudly (``.ci/run`` installs it from
Debian packages); nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from simulations.redis_proc import RedisServer
from simulations.redis_proc import free_port as _free_port

__all__ = ["RedisServer", "_free_port", "dump_all", "redis_server", "redis_url"]


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


def dump_all(client: Any) -> list[str]:
    """Every key and every value of every type in the database, as text: what a scan for plain personal
    data must search (a decode_responses client)."""
    out: list[str] = []
    for key in client.scan_iter(count=1000):
        out.append(key)
        kind = client.type(key)
        if kind == "string":
            out.append(client.get(key) or "")
        elif kind == "hash":
            out.extend(f"{k}={v}" for k, v in client.hgetall(key).items())
        elif kind == "list":
            out.extend(client.lrange(key, 0, -1))
        elif kind == "set":
            out.extend(client.smembers(key))
        elif kind == "zset":
            out.extend(f"{m}={s!r}" for m, s in client.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            out.extend(f"{k}={v}" for _, fields in client.xrange(key) for k, v in fields.items())
        else:
            raise AssertionError(f"unexpected type {kind} for {key}")
    return out
