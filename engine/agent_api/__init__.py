"""The agent API: real people working a campaign over HTTP and WebSocket.

``ApiDesk`` is the ``engine.desk.AgentDesk`` for humans (``[agents] desk = "api"``);
``AgentApiServer`` serves it (aiohttp; HTTPS with ``engine.agent_api.tls``) inside
the engine's event loop; ``Roster`` says who holds which token (reloaded while
running); ``engine.agent_api.check`` is what ``dialer check`` verifies of it.
docs/agent-api.md describes the endpoints and events.
"""

from engine.agent_api.desk import ApiDesk, DeskError
from engine.agent_api.tokens import Identity, Roster, TokenError

__all__ = ["ApiDesk", "DeskError", "Identity", "Roster", "TokenError"]
