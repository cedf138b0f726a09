"""The one store interface: leads, leases, reservations, counters, results.

Every method is one logical round trip, so that the Redis implementation can
make each of them a single pipeline or Lua script and stay atomic across engine
nodes. Times passed in are wall-clock POSIX seconds from the engine's injected
clock (virtual in simulations), never read by the store itself.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from engine.clock import iso
from engine.models import CallAttempt, CallResult, Lead, Outcome, Veto, mask_phone, slot_init


class StoreUnavailable(Exception):
    """The store cannot be reached. Compliance state is unknown, so the engine stops
    dialling (fail closed) and retries what must be recorded until the store is back."""


@dataclass(frozen=True, slots=True)
class Caps:
    """Per-contact limits re-checked atomically at reservation time."""

    per_day: int = 2  # attempts per called party's local day, per number, across campaigns
    per_24h: int = 3  # attempts in any rolling 24 h, per number, across campaigns
    lifetime: int = 10  # attempts per lead in this campaign
    lock_s: float = 180.0  # in-flight lock on the number; frees itself if a node dies


@slot_init  # one per dial
@dataclass(frozen=True, slots=True)
class DialContext:
    """Everything the pre-dial hooks may decide on, loaded in one round trip."""

    lead: Lead
    now: float  # wall clock, POSIX seconds
    day_key: str  # the called party's local date (YYYY-MM-DD) at ``now``
    attempts_today: int
    attempts_24h: int
    dnc: bool  # on the global or this campaign's DNC / blacklist
    invalid_number: bool  # learnt from hangup causes: never dial again
    last_abandoned_at: float | None  # last abandoned call to this number (any campaign)
    in_flight: bool  # the number is locked by an attempt in progress
    history: tuple[dict[str, Any], ...] = ()  # this lead's earlier results, newest last


@dataclass(frozen=True, slots=True)
class Reservation:
    """Outcome of ``reserve_attempt``: ``ok`` or the rule that refused it."""

    ok: bool
    rule: str = ""
    reason: str = ""


@slot_init  # one per window at most pacing decisions
@dataclass(frozen=True, slots=True)
class AbandonCounts:
    """Campaign-wide counts over one regulatory window."""

    abandoned: int
    live: int

    @property
    def rate(self) -> float:
        return self.abandoned / self.live if self.live else 0.0


@runtime_checkable
class Store(Protocol):
    """Campaign state shared by every engine node of a deployment."""

    async def add_leads(self, leads: Iterable[Lead]) -> int:
        """Insert or update leads (keyed by campaign and number); returns how many are new."""

    async def claim_leads(self, campaign_id: str, n: int, *, now: float, node_id: str,
                          lease_s: float, tiers: Collection[int] | None = None,
                          zone_bonus: Mapping[str, float] | None = None) -> list[Lead]:
        """Lease up to ``n`` eligible leads in rank order (tier, score, next eligible time),
        only from ``tiers`` when given (a campaign mixing pacing modes by tier).

        Within a tier, leads come highest *effective score* first: the lead's score plus
        ``zone_bonus[zone]`` (0 for a zone not in it), where ``zone`` is the lead's time zone as
        imported (``lead_zone``: ``""`` for a lead with none, which the campaign's zone stands
        for). That is how the best time to call reorders a tier at claim time (the hook
        ``dialer_claim_order``) without rewriting any stored score. Ready leads are queued per
        (tier, zone), each queue in score order, and the claim merges the heads of a tier's
        queues: exactly the order of sorting the tier's ready leads by effective score. Ties go
        as without a bonus (the Redis store: lead id; the memory store: the order leads became
        ready), so with no ``zone_bonus`` the order is the plain score order.

        A lease that is neither finished nor released by ``now + lease_s`` lapses
        and the lead is handed out again, so a dead node loses no lead. Likewise an
        attempt reserved but never finished (its node died in the call) is held until
        its number lock lapses (``Caps.lock_s``: the PBX may still carry the call), then
        recorded once as lost (``lost_row``: outcome unknown) and the lead comes back
        for its *next* attempt: the lost one stays counted, never redialled as itself.
        """

    async def dial_context(self, lead: Lead, *, now: float, day_key: str) -> DialContext:
        """Load what the pre-dial hooks need about this lead and its number."""

    async def reserve_attempt(self, call: CallAttempt, *, now: float, day_key: str, caps: Caps,
                              node_id: str) -> Reservation:
        """Atomically: DNC and invalid check, caps re-checked, number locked, counters incremented.

        Only after ``ok`` may the call be originated. ``call.lead`` must be the claimed
        copy: if the stored attempt count moved since the claim (the lease lapsed and
        another node dialled the lead) the reservation is refused as ``lease_lost``, so an
        attempt number is never dialled twice.
        """

    async def dial_contexts(self, leads: Sequence[Lead], *, now: float,
                            day_keys: Sequence[str]) -> list[DialContext]:
        """``dial_context`` for a burst of leads (``day_keys[i]`` is ``leads[i]``'s local date), in one
        round trip: the pacer hands out dials in bursts, and a round trip per lead behind a busy event
        loop is what made a decision slow under load (see BENCHMARKS.md, Floods)."""

    async def reserve_attempts(self, calls: Sequence[CallAttempt], *, now: float, day_keys: Sequence[str],
                               caps: Caps, node_id: str) -> list[Reservation]:
        """``reserve_attempt`` for a burst of calls, each reservation as atomic as alone, in a constant
        number of round trips; one ``Reservation`` per call, in order. Calls are decided in order, so
        of two calls to one number in a burst the second is refused (``in_flight``).

        An unknown lead is refused as ``unknown_lead`` (``reserve_attempt`` raises KeyError) so that the
        burst's other reservations are not lost with it. On ``StoreUnavailable`` some of the burst may
        have been reserved: the caller dials none of it, and those attempts are held and then recorded
        as lost (see ``claim_leads``) -- never dialled twice.
        """

    async def read_and_reserve(self, calls: Sequence[CallAttempt], *, now: float, day_keys: Sequence[str],
                               caps: Caps, node_id: str) -> tuple[list[DialContext], list[Reservation]]:
        """``dial_contexts`` then ``reserve_attempts`` for a burst, in one round trip where the store is
        networked: each context is read just before the reservations, so it is what the gate would
        have read before them. Reserving before the gate has spoken is safe because nothing is dialled
        until it has: a call the gate then refuses is undone with ``undo_reservations`` (its number
        lock, counts and lead restored as they were), and were the node to die first, the attempt is
        held and recorded as lost like any reserved call of a dead node -- never dialled. Half the
        round trips of a decision: the wait for Redis is most of a decision's time (BENCHMARKS.md)."""

    async def undo_reservations(self, calls: Sequence[CallAttempt], *, now: float,
                                day_keys: Sequence[str]) -> None:
        """Give back reservations ``read_and_reserve`` made for calls that were then not dialled (the
        gate refused them): the number unlocked, its day and 24 h counts and the lead's attempt count
        as before, the lead leased to its holder again (so ``release_lead`` can reschedule it). A call
        whose reservation is no longer its own (finished, recorded as lost) is left alone."""

    async def finish_attempt(self, call: CallAttempt, result: CallResult, *, now: float,
                             next_eligible: float | None, abandoned: bool, live: bool,
                             invalid_number: bool = False) -> None:
        """Record the result, free the number, count the live answer/abandon, and
        reschedule the lead (``next_eligible``) or close it (None)."""

    async def release_lead(self, lead: Lead, *, now: float, next_eligible: float | None) -> None:
        """Give back a leased lead that was not dialled (veto, preview skip, shutdown).

        Ignored when the lead was dialled since this copy was claimed (its stored attempt
        count moved) or is in a call or closed: a holder whose lease lapsed must not revive
        a closed lead nor unhook another node's call."""

    async def record_block(self, campaign_id: str, lead: Lead, veto: Veto, *, now: float) -> None:
        """Remember that a dial was refused, with its rule and reason, for the compliance report."""

    async def abandon_counts(self, campaign_id: str, *, since: float, now: float) -> AbandonCounts:
        """Abandoned calls and live answers for the campaign in ``[since, now]``."""

    async def add_dnc(self, phones: Iterable[str], campaign_id: str | None = None) -> int:
        """Add numbers to the global (or one campaign's) do-not-call list; effective at once."""

    async def invalid_numbers(self, phones: Iterable[str]) -> list[bool]:
        """For each number: found invalid by an earlier call, so an import leaves it out."""

    async def lead_counts(self, campaign_id: str) -> dict[str, int]:
        """Leads per status (pending, leased, done), for progress displays."""

    async def lead_zones(self, campaign_id: str) -> set[str]:
        """The time zones the campaign's leads are queued under (``lead_zone``): what a claim-order
        bonus is asked for (once a minute or so, never per claim)."""

    async def next_eligible_at(self, campaign_id: str) -> float | None:
        """Earliest time a pending lead becomes eligible, or None when none is left."""

    async def results(self, campaign_id: str) -> list[dict[str, Any]]:
        """Every result row recorded for the campaign, oldest first."""

    async def blocks(self, campaign_id: str) -> list[dict[str, Any]]:
        """Every refused dial recorded for the campaign, oldest first."""

    async def warm_up(self) -> None:
        """Get ready for the first dials before the campaign starts: a networked store opens the
        connections and loads the scripts a burst will need, so that the first seconds of a shift are
        not the slowest (a new connection's handshake and a script's first load land on the decisions
        that meet them). Failing here is not fatal: the dials themselves will find the store."""

    async def close(self) -> None:
        """Release connections."""


def lead_zone(lead: Lead) -> str:
    """The zone a lead is queued under for the claim order: its IANA time zone as imported, or ``""``
    when it has none (the bonus of ``""`` is the campaign's zone's: the store does not know it). Not
    checked: a misspelt zone is its own queue, and the bonus hook reads it as the campaign's."""
    return lead.timezone or ""


def abandon_bucket(ts: float, width: float = 60.0) -> int:
    """Index of the time bucket holding ``ts``; minute buckets keep 24 h windows exact to the minute."""
    return int(ts // width)


def lost_row(call: CallAttempt, now: float) -> dict[str, Any]:
    """The result row a store records for an attempt reserved at ``now`` and never finished (its
    node died): outcome unknown, so reports account for every reserved attempt exactly once."""
    lead = call.lead
    return CallResult(
        call_id=call.call_id, campaign_id=call.campaign_id, lead_id=lead.lead_id, attempt_no=call.attempt_no,
        outcome=Outcome.UNKNOWN, cause=None, disposition=None, agent_id=None, answer_kind=None,
        started=iso(now), ring_s=None, wait_s=None, talk_s=None, phone_masked=mask_phone(lead.phone),
        tier=lead.tier, customer_type=(lead.attributes or {}).get("customer_type"),
    ).as_row()
