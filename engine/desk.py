"""The agent desk: what the engine asks of the people taking calls.

In production this is the agent application (screen-pop, preview go/skip,
disposition entry); in simulations it is a model of agents. The engine only
needs three things from it: log agents in and out over the shift, say go or
skip on a previewed lead, and give a disposition at the end of wrap-up.
"""

from __future__ import annotations

from typing import Any, Protocol

from engine.agents import AgentPool
from engine.models import Agent, CallAttempt


class AgentDesk(Protocol):
    async def run(self, pool: AgentPool) -> None:
        """Drive logins, breaks and logouts for the whole shift; cancelled when the campaign stops."""

    async def preview(self, agent: Agent, call: CallAttempt) -> bool:
        """Show the call's lead, its history and alerts to the agent (number masked: nothing is dialled
        yet); True to dial it now, False to skip it."""

    def show(self, agent: Agent, screen_pop: dict[str, Any]) -> None:
        """Put the screen-pop of the call being connected on the agent's screen (must not block)."""

    async def wrap_up(self, agent: Agent, call: CallAttempt) -> str | None:
        """Return when the agent has finished after-call work, with their disposition (or None).

        A desk whose ``wrap_up`` always returns within a bound of its own says so with a class
        attribute ``wrap_up_bounded = True`` (the agent API's ``[agents] wrap_up_timeout``, the
        simulated agents); around any other the dialer sets a timeout of its own
        (``engine.dialer.WRAP_UP_GUARD_S``), so that no desk can hold an agent in wrap-up forever."""
