"""Dials reserved ahead (the hopper): leads claimed, read and reserved before the pacer asks for them.

With a store across the network (Redis), a burst of dials spent most of its decision waiting for the
store: the claim, then every lead's context and every reservation in one round trip, the burst's last
dial going out only once all of it was back (BENCHMARKS.md, Floods). A pacer's decision is about the
agents free *now*; the store work for its dials can be done before, while nothing waits for it. So each
lane keeps a few leads whose reservations are already made (number locked and counted, the lead in a
call), and a decision dials from them with only the compliance gate left to run: the gate still sees
every dial, at the moment of the dial (its clock, the calling window), on the context read when the lead
was reserved. A refill after each decision (``Dialer._fill``) tops the hopper up to what the last
decisions asked for; what the hopper cannot give is claimed and reserved on the spot, as without one.

Why holding reservations is safe: from its reservation on, the number is locked by this node, so no
other node can dial it and its day and 24 h counts cannot move but by this call; what can change during
the hold is a new DNC entry, an invalid-number mark or another campaign's abandon on the number, which
the gate then reads up to ``max_age`` late (1 s by default: each entry older than that is given back --
its reservation undone and the lead released for an immediate new claim -- and read afresh if claimed
again). A stop gives every entry back. A node that dies holding entries leaves them as it leaves calls
in flight: their locks lapse and the reservations are recorded as lost attempts, never dialled twice.
When the store goes away, entries reserved before may still be dialled until a refill or a claim
finds it gone (at most ``max_age`` later: their reservations are made, their results kept and written
once it is back, as for calls in flight); then dialling pauses, from the hopper too, and no
reservation is made until the store answers again, when the entries left, aged, are given back.

The hopper is for stores with a round trip (a ``remote`` store: Redis); the in-memory store answers at
once and the simulator's results must not depend on it (``[pacing] reserve_ahead``: unset = on with
Redis only; ``reserves_ahead``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from engine.models import CallAttempt
from engine.store.base import DialContext

MAX_AGE_S = 1.0  # an entry older than this is given back rather than dialled on a context this old
HEADROOM = 1.5  # held: this many times the most dials a recent decision asked for
MOST = 200  # never more held than this, whatever the decisions asked


def reserves_ahead(setting: bool | None, store: Any) -> bool:
    """Whether a campaign keeps dials reserved ahead: as ``[pacing] reserve_ahead`` says, and when it is
    unset, only with a store whose every call is a round trip (its ``remote`` attribute)."""
    return setting if setting is not None else getattr(store, "remote", False) is True


@dataclass(slots=True)
class Ahead:
    """One reserved lead waiting for a decision: its attempt, what the store said about it, and when."""

    call: CallAttempt  # not in flight until taken (``Dialer._track``)
    ctx: DialContext  # read just before the reservation, by the same store command
    day_key: str  # the called party's local day the reservation counted the attempt on
    at: float  # event-loop time of the reservation


class Hopper:
    """The reserved leads of one lane, oldest first, and how many to hold."""

    def __init__(self, max_age: float = MAX_AGE_S, headroom: float = HEADROOM, most: int = MOST) -> None:
        self.max_age, self.headroom, self.most = max_age, headroom, most
        self.ready: deque[Ahead] = deque()
        self._back: list[Ahead] = []  # aged or drained, to be given back by the next refill
        self._asks: deque[tuple[float, int]] = deque()  # (loop time, dials) of the recent decisions that dialled
        self.filling = False  # a refill is under way (one at a time per lane)
        self.taken = 0  # dials that went out from the hopper
        self.missed = 0  # dials a decision asked for that the hopper did not have (reserved on the spot)
        self.given_back = 0  # entries given back unused (aged, or at the stop)

    def __len__(self) -> int:
        return len(self.ready)

    @property
    def busy(self) -> bool:
        """Holding or handling leads: a short claim does not mean the campaign has run out."""
        return bool(self.ready or self._back or self.filling)

    def asked(self, dials: int, now: float) -> None:
        """A decision at ``now`` (loop time) asked for ``dials``."""
        if dials > 0:
            self._asks.append((now, dials))
        while self._asks and now - self._asks[0][0] > self.max_age:
            self._asks.popleft()

    def wanted(self) -> int:
        """How many entries to hold: ``headroom`` times the largest ask of the last ``max_age`` seconds
        (so a decision a little larger than the last ones is still served from the hopper), at most
        ``most``; none unless at least two dials were asked for in that time (by one decision or by
        two). Entries are only worth reserving while dials are asked for steadily: a single dial now
        and then (a small team on long calls) would leave them to age and be given back unused, a
        claim, a reservation and its undoing spent for nothing."""
        if sum(n for _, n in self._asks) < 2:
            return 0
        return min(self.most, math.ceil(max(n for _, n in self._asks) * self.headroom))

    def shortfall(self) -> int:
        return max(0, self.wanted() - len(self.ready))

    def take(self, n: int, now: float) -> list[Ahead]:
        """Up to ``n`` entries, oldest first, after putting aside those too old to dial (``age``)."""
        self.age(now)
        got = [self.ready.popleft() for _ in range(min(n, len(self.ready)))]
        self.taken += len(got)
        self.missed += n - len(got)
        return got

    def age(self, now: float) -> None:
        """Entries reserved more than ``max_age`` before ``now`` (loop time) move to the ones to give back."""
        while self.ready and now - self.ready[0].at > self.max_age:
            self._back.append(self.ready.popleft())

    def drain(self) -> None:
        """Every entry moves to the ones to give back (the run is stopping)."""
        self._back.extend(self.ready)
        self.ready.clear()

    @property
    def held_back(self) -> int:
        return len(self._back)

    def to_give_back(self) -> list[Ahead]:
        """The entries put aside by ``age`` and ``drain``, removed: the caller undoes their reservations."""
        out, self._back = self._back, []
        self.given_back += len(out)
        return out

    def keep_back(self, entries: list[Ahead]) -> None:
        """Entries the caller could not give back (the store down): kept to be tried again."""
        self._back = entries + self._back
        self.given_back -= len(entries)

    def figures(self) -> dict[str, int]:
        return {"taken": self.taken, "missed": self.missed, "given_back": self.given_back, "held": len(self.ready)}
