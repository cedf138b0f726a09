"""Shared test fixtures: a real redis-server, and the engine's own pytest plugin (``engine.testing``:
``vrun``, ``dial_once``, ``make_snapshot``, ...), loaded here too so the tests do not depend on how the
package was installed."""

from redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

pytest_plugins = ["engine.testing"]
