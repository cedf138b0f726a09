"""A Redis store made ready before the first dials: layout checked, scripts loaded, connections open.
Against a real redis-server (tests/redis_server.py)."""

from __future__ import annotations

import redis

from engine.pii import BlindIndex
from engine.store.redis import SCRIPTS, WARM_CONNECTIONS, RedisStore

INDEX = BlindIndex(b"warm-up test index key, 32 bytes")


async def test_warm_up_opens_connections_and_loads_every_script(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    admin.script_flush()
    before = len(admin.client_list())
    store = RedisStore(redis_url, prefix="warm", index=INDEX)
    try:
        assert not any(admin.script_exists(*(store._scripts[n].sha for n in SCRIPTS)))
        await store.warm_up()
        assert all(admin.script_exists(*(store._scripts[n].sha for n in SCRIPTS)))
        opened = len(admin.client_list()) - before
        assert opened >= WARM_CONNECTIONS
        assert admin.get("warm:{meta}:layout") is not None  # the layout was checked (and stamped) first
        await store.warm_up()  # twice is harmless: the pool reuses what it opened
        assert len(admin.client_list()) - before == opened
    finally:
        await store.close()
        admin.close()
