"""The embedded default store: everything in this process's memory.

Single-node by nature, but it honours the same contract as the Redis store
(leases lapse, reservations re-check caps and lock the number, counts are kept
in minute buckets), so the engine cannot come to depend on behaviour only one
implementation has. Numbers are keyed by their blind index, never in plain.
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
from collections import defaultdict, deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

from engine.models import CallAttempt, CallResult, Lead, Veto
from engine.pii import BlindIndex
from engine.store.base import AbandonCounts, Caps, DialContext, Reservation, abandon_bucket, lead_zone, lost_row

_DAY = 86_400.0
_RESERVED = Reservation(True)  # immutable: one for every reservation made
_LEAD_FIELDS = [f for f in fields(Lead) if f.init]
_lead_values = operator.attrgetter(*(f.name for f in _LEAD_FIELDS))


def _copy_lead(lead: Lead) -> Lead:
    """``dataclasses.replace(lead)`` (a shallow copy), five times faster: one is made per lead handed out."""
    return Lead(*_lead_values(lead))


if any(f.kw_only for f in _LEAD_FIELDS):  # pragma: no cover - positional copying would not fit
    _copy_lead = replace


class _Queue:
    """Entries ``(key, seq, lead_id)`` taken smallest first: the order one heap of them gives, for less.

    The store's queues are long (a list's ready leads; its waiting ones, among them a number lock per
    dial, held four hours) and their entries mostly come in order: a lease or a lock comes due a fixed
    delay after it is made, an imported list is due at once, retries of one outcome come due after one
    delay, leads of one score become ready in turn. Each kind of entry has a FIFO, pushed and taken in
    O(1); an entry out of order there (or of no kind) goes to the heap. Taking compares the heads, so
    the order is exactly the one heap's (seqs only grow: no two entries are equal).
    """

    __slots__ = ("_heap", "_runs")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._runs: dict[str, deque[tuple[float, int, str]]] = {}

    def push(self, entry: tuple[float, int, str], kind: str | None = None) -> None:
        """Add an entry of a ``kind`` ("ready", "lease", "lock", "eligible"): to its FIFO when in order there."""
        if kind is not None:
            run = self._runs.get(kind)
            if run is None:
                run = self._runs[kind] = deque()
            if not run or run[-1] < entry:
                run.append(entry)
                return
        heapq.heappush(self._heap, entry)

    def first(self) -> tuple[float, int, str] | None:
        """The smallest entry, left in place; None when empty."""
        first = self._heap[0] if self._heap else None
        for run in self._runs.values():
            if run and (first is None or run[0] < first):
                first = run[0]
        return first

    def pop(self, upto: float = math.inf) -> tuple[float, int, str] | None:
        """Take the smallest entry if its key is at most ``upto``; None when empty (or it is above)."""
        heap = self._heap
        first, source = (heap[0] if heap else None), None
        for run in self._runs.values():
            if run and (first is None or run[0] < first):
                first, source = run[0], run
        if first is None or first[0] > upto:
            return None
        if source is None:
            heapq.heappop(heap)
        else:
            source.popleft()
        return first

    def due(self, now: float) -> list[str]:
        """The lead ids of the entries due at ``now`` (key: a time), taken, in order: what ``pop(now)`` in
        a loop gives, for less (every claim runs it). Each source's due entries come out in order (a FIFO's
        from its front, the heap's as popped), so one sort of them all, which merges those runs, gives the
        order of one heap (entries are never equal: their seqs differ)."""
        heap, taken, sources = self._heap, [], 0
        while heap and heap[0][0] <= now:
            taken.append(heapq.heappop(heap))
        sources += bool(taken)
        for run in self._runs.values():
            if run and run[0][0] <= now:
                sources += 1
                while run and run[0][0] <= now:
                    taken.append(run.popleft())
        if sources > 1:
            taken.sort()
        return [entry[2] for entry in taken]


class MemoryStore:
    """In-process implementation of ``engine.store.base.Store``."""

    def __init__(self, index: BlindIndex | None = None) -> None:
        self._index = index or BlindIndex.from_env()
        self._numbers: dict[str, int] = {}  # number -> its blind index: one HMAC per lead, not three per dial
        self._seq = itertools.count()
        self._leads: dict[tuple[str, str], Lead] = {}  # (campaign, lead_id) -> lead
        self._by_number: dict[tuple[str, int], str] = {}  # (campaign, number index) -> lead_id
        self._lease_until: dict[tuple[str, str], float] = {}
        # Per campaign: ready queues per tier and zone (-score, seq, lead_id) and a waiting queue (time, seq,
        # lead_id). Per zone so that a claim can add a zone's bonus to a whole queue (``claim_leads``).
        self._ready: dict[str, dict[int, dict[str, _Queue]]] = defaultdict(dict)
        self._zones: dict[str, set[str]] = defaultdict(set)  # per campaign: every zone a lead was imported with
        self._waiting: dict[str, _Queue] = defaultdict(_Queue)
        self._dnc: set[int] = set()
        self._dnc_campaign: dict[str, set[int]] = defaultdict(set)
        self._invalid: set[int] = set()
        self._locks: dict[int, float] = {}  # number index -> lock expiry
        self._day_counts: dict[tuple[int, str], int] = defaultdict(int)
        self._recent: dict[int, deque[float]] = defaultdict(deque)  # number index -> dial times
        self._last_abandon: dict[int, float] = {}
        self._abandon_buckets: dict[str, dict[int, list[int]]] = defaultdict(dict)
        # Per campaign: [first bucket, last bucket, abandoned, live] over all its buckets, so that a window
        # holding them all (the pacer asks every 30 s, and a shift is shorter than its windows) is answered
        # without summing the buckets one by one.
        self._abandon_span: dict[str, list[int]] = {}
        self._results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._history: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self._blocks: dict[str, list[dict[str, Any]]] = defaultdict(list)
        # In a call: what its row is made of if its node dies (made only then: nodes rarely die).
        self._lost: dict[tuple[str, str], tuple[CallAttempt, float]] = {}
        # A reserved lead's status and lease before its reservation, for ``undo_reservations``.
        self._before_call: dict[tuple[str, str], tuple[str, float | None]] = {}
        self._finished: set[str] = set()  # call ids recorded (finished, or lost)

    # -- leads ---------------------------------------------------------------------------

    async def add_leads(self, leads: Iterable[Lead]) -> int:
        new = 0
        for lead in leads:
            number = self._number(lead.phone)
            existing_id = self._by_number.get((lead.campaign_id, number))
            if existing_id is not None:
                current = self._leads[(lead.campaign_id, existing_id)]
                # An update refreshes what the import knows, never the dialling history.
                updated = replace(lead, lead_id=existing_id, attempts=current.attempts,
                                  next_eligible=current.next_eligible, status=current.status)
                self._leads[(lead.campaign_id, existing_id)] = updated
                self._zones[lead.campaign_id].add(lead_zone(updated))
                if updated.status == "pending":
                    self._queue(updated)
                continue
            key = (lead.campaign_id, lead.lead_id)
            if key in self._leads:
                raise ValueError(f"lead id {lead.lead_id!r} already used for another number")
            self._leads[key] = lead
            self._by_number[(lead.campaign_id, number)] = lead.lead_id
            self._zones[lead.campaign_id].add(lead_zone(lead))
            if lead.status == "pending":
                self._queue(lead)
            new += 1
        return new

    def _number(self, phone: str) -> int:
        number = self._numbers.get(phone)
        if number is None:
            number = self._numbers[phone] = self._index(phone)
        return number

    def _queue(self, lead: Lead) -> None:
        self._waiting[lead.campaign_id].push((lead.next_eligible, next(self._seq), lead.lead_id), "eligible")

    def _ready_queue(self, campaign_id: str, tier: int, zone: str) -> _Queue:
        queues = self._ready[campaign_id].setdefault(tier, {})
        queue = queues.get(zone)
        if queue is None:
            queue = queues[zone] = _Queue()
        return queue

    def _promote(self, campaign_id: str, now: float) -> None:
        for lead_id in self._waiting[campaign_id].due(now):
            lead = self._leads[(campaign_id, lead_id)]
            if lead.status == "leased" and self._lease_until.get((campaign_id, lead_id), 0.0) <= now:
                lead.status = "pending"  # the node holding it is gone
            elif lead.status == "in_call" and self._lease_until.get((campaign_id, lead_id), 0.0) <= now:
                self._lose((campaign_id, lead_id), lead, now)
            if lead.status == "pending" and lead.next_eligible <= now:
                self._ready_queue(campaign_id, lead.tier, lead_zone(lead)).push(
                    (-lead.score, next(self._seq), lead_id), "ready")

    def _lose(self, key: tuple[str, str], lead: Lead, now: float) -> None:
        """An attempt whose number lock lapsed unfinished: recorded once as lost, the lead back for its next."""
        lost = self._lost.pop(key, None)
        self._before_call.pop(key, None)
        row = lost_row(*lost) if lost is not None else None
        self._lease_until.pop(key, None)
        if row is not None and row["call_id"] not in self._finished:
            self._finished.add(row["call_id"])
            self._results[key[0]].append(row)
            self._history[key].append(row)
        lead.status = "pending"
        lead.next_eligible = now

    async def claim_leads(self, campaign_id: str, n: int, *, now: float, node_id: str,
                          lease_s: float, tiers: Collection[int] | None = None,
                          zone_bonus: Mapping[str, float] | None = None) -> list[Lead]:
        self._promote(campaign_id, now)
        by_tier, out = self._ready[campaign_id], []
        for tier in sorted(by_tier):
            if tiers is not None and tier not in tiers:
                continue
            queues = by_tier[tier]
            if len(queues) == 1:  # one zone: its heap is the order, whatever its bonus
                [(zone, ready)] = queues.items()
                while len(out) < n and (entry := ready.pop()) is not None:
                    moved = self._lease_one(campaign_id, entry[2], tier, zone, now, lease_s, out)
                    if moved is not None and moved[0] == tier:
                        break  # re-zoned: the tier has two heaps now, merged below
            if len(queues) > 1:
                self._claim_merged(campaign_id, tier, queues, zone_bonus or {}, n, now, lease_s, out)
            if len(out) >= n:
                break
        return out

    def _claim_merged(self, campaign_id: str, tier: int, queues: dict[str, _Queue],
                      bonus: Mapping[str, float], n: int, now: float, lease_s: float, out: list[Lead]) -> None:
        """A k-way merge of the tier's zone heaps on (-score - bonus, seq): each heap is in -score order
        and its bonus is the same for all of it, so taking the best head each time is exactly the order
        of one heap over all the tier's leads keyed by effective score (see ``Store.claim_leads``).
        ``heads`` holds (key, seq, zone) of each heap's top, lazily: an entry whose heap top moved on
        (a lead re-queued into that heap meanwhile) is dropped when it comes up."""
        heads = []
        for zone, ready in queues.items():
            if (top := ready.first()) is not None:
                heads.append((top[0] - bonus.get(zone, 0.0), top[1], zone))
        heapq.heapify(heads)
        while heads and len(out) < n:
            _, seq, zone = heapq.heappop(heads)
            ready = queues[zone]
            top = ready.first()
            if top is None or top[1] != seq:
                continue  # stale: that heap's top changed since this entry was made
            ready.pop()
            moved = self._lease_one(campaign_id, top[2], tier, zone, now, lease_s, out)
            if moved is not None and moved[0] == tier:  # re-queued into another heap of this tier: new top?
                other = queues[moved[1]].first()
                assert other is not None
                heapq.heappush(heads, (other[0] - bonus.get(moved[1], 0.0), other[1], moved[1]))
            if (top := ready.first()) is not None:
                heapq.heappush(heads, (top[0] - bonus.get(zone, 0.0), top[1], zone))

    def _lease_one(self, campaign_id: str, lead_id: str, tier: int, zone: str, now: float, lease_s: float,
                   out: list[Lead]) -> tuple[int, str] | None:
        """Lease a lead popped from the (tier, zone) heap into ``out``; a stale entry is dropped, and a lead
        re-tiered or re-zoned since it was queued is queued where it now belongs (returned)."""
        lead = self._leads[(campaign_id, lead_id)]
        if lead.status != "pending" or lead.next_eligible > now:
            return None  # stale heap entry
        where = (lead.tier, lead_zone(lead))
        if where != (tier, zone):  # re-tiered (or re-zoned) since it was queued
            self._ready_queue(campaign_id, lead.tier, where[1]).push((-lead.score, next(self._seq), lead_id), "ready")
            return where
        lead.status = "leased"
        self._lease_until[(campaign_id, lead_id)] = now + lease_s
        self._waiting[campaign_id].push((now + lease_s, next(self._seq), lead_id), "lease")
        out.append(_copy_lead(lead))
        return None

    async def release_lead(self, lead: Lead, *, now: float, next_eligible: float | None) -> None:
        stored = self._leads[(lead.campaign_id, lead.lead_id)]
        if stored.status not in ("leased", "pending") or stored.attempts != lead.attempts:
            return  # a stale holder: the lead was dialled or closed since (see Store.release_lead)
        self._lease_until.pop((lead.campaign_id, lead.lead_id), None)
        self._reschedule(stored, next_eligible)

    def _reschedule(self, stored: Lead, next_eligible: float | None) -> None:
        if next_eligible is None:
            stored.status = "done"
            return
        stored.status = "pending"
        stored.next_eligible = next_eligible
        self._queue(stored)

    # -- dialling ----------------------------------------------------------------------

    def _dnc_hit(self, campaign_id: str, number: int) -> bool:
        return number in self._dnc or number in self._dnc_campaign.get(campaign_id, ())

    def _recent_count(self, number: int, now: float) -> int:
        times = self._recent.get(number)
        if not times:
            return 0
        while times and times[0] <= now - _DAY:
            times.popleft()
        return len(times)

    async def dial_context(self, lead: Lead, *, now: float, day_key: str) -> DialContext:
        return self._dial_context(lead, now, day_key)

    # The per-lead work of ``dial_context`` and ``reserve_attempt`` as plain methods, which the burst
    # versions (``dial_contexts``, ``reserve_attempts``) call directly: nothing here waits, and a
    # coroutine per lead and per call was most of what a burst cost beyond the work itself.

    def _dial_context(self, lead: Lead, now: float, day_key: str) -> DialContext:
        number = self._number(lead.phone)
        return DialContext(
            lead=lead,
            now=now,
            day_key=day_key,
            attempts_today=self._day_counts.get((number, day_key), 0),
            attempts_24h=self._recent_count(number, now),
            dnc=self._dnc_hit(lead.campaign_id, number),
            invalid_number=number in self._invalid,
            last_abandoned_at=self._last_abandon.get(number),
            in_flight=self._locks.get(number, 0.0) > now,
            history=tuple(self._history.get((lead.campaign_id, lead.lead_id), ())),
        )

    async def reserve_attempt(self, call: CallAttempt, *, now: float, day_key: str, caps: Caps,
                              node_id: str) -> Reservation:
        return self._reserve_attempt(call, now, day_key, caps)

    def _reserve_attempt(self, call: CallAttempt, now: float, day_key: str, caps: Caps) -> Reservation:
        lead = call.lead
        number = self._number(lead.phone)
        stored = self._leads[(lead.campaign_id, lead.lead_id)]
        if self._dnc_hit(lead.campaign_id, number):
            return Reservation(False, "dnc", "number is on a do-not-call list")
        if number in self._invalid:
            return Reservation(False, "invalid_number", "number found invalid on an earlier call")
        if self._locks.get(number, 0.0) > now:
            return Reservation(False, "in_flight", "another attempt to this number is in progress")
        if self._day_counts.get((number, day_key), 0) >= caps.per_day:
            return Reservation(False, "cap_per_day", f"{caps.per_day} calls already on {day_key}")
        if self._recent_count(number, now) >= caps.per_24h:
            return Reservation(False, "cap_24h", f"{caps.per_24h} calls in the last 24 h")
        if stored.attempts >= caps.lifetime:
            return Reservation(False, "cap_lifetime", f"{caps.lifetime} attempts already made")
        if stored.attempts != lead.attempts:
            return Reservation(False, "lease_lost", "the lead was dialled by another node after this node's lease "
                               "lapsed")
        key = (lead.campaign_id, lead.lead_id)
        self._before_call[key] = (stored.status, self._lease_until.get(key))
        self._locks[number] = now + caps.lock_s
        self._day_counts[(number, day_key)] += 1
        self._recent[number].append(now)
        stored.attempts += 1
        stored.status = "in_call"
        self._lease_until[key] = now + caps.lock_s  # held as long as the number lock (see Store.claim_leads)
        self._lost[key] = (call, now)
        self._waiting[lead.campaign_id].push((now + caps.lock_s, next(self._seq), lead.lead_id), "lock")
        return _RESERVED

    async def dial_contexts(self, leads: Sequence[Lead], *, now: float,
                            day_keys: Sequence[str]) -> list[DialContext]:
        """One ``dial_context`` after the other: nothing here waits, so a burst costs what its leads do."""
        return [self._dial_context(lead, now, day_key) for lead, day_key in zip(leads, day_keys, strict=True)]

    async def reserve_attempts(self, calls: Sequence[CallAttempt], *, now: float, day_keys: Sequence[str],
                               caps: Caps, node_id: str) -> list[Reservation]:
        """One ``reserve_attempt`` after the other, in order (see ``Store.reserve_attempts``)."""
        out = []
        for call, day_key in zip(calls, day_keys, strict=True):
            if (call.lead.campaign_id, call.lead.lead_id) not in self._leads:
                out.append(Reservation(False, "unknown_lead", f"unknown lead {call.lead.lead_id!r}"))
                continue
            out.append(self._reserve_attempt(call, now, day_key, caps))
        return out

    async def read_and_reserve(self, calls: Sequence[CallAttempt], *, now: float, day_keys: Sequence[str],
                               caps: Caps, node_id: str) -> tuple[list[DialContext], list[Reservation]]:
        """Every context, then every reservation, as the Redis store's one round trip runs them."""
        contexts = await self.dial_contexts([call.lead for call in calls], now=now, day_keys=day_keys)
        return contexts, await self.reserve_attempts(calls, now=now, day_keys=day_keys, caps=caps, node_id=node_id)

    async def undo_reservations(self, calls: Sequence[CallAttempt], *, now: float,
                                day_keys: Sequence[str]) -> None:
        for call, day_key in zip(calls, day_keys, strict=True):
            lead = call.lead
            key = (lead.campaign_id, lead.lead_id)
            stored = self._leads.get(key)
            before = self._before_call.get(key)
            lost = self._lost.get(key)
            if stored is None or before is None or lost is None or lost[0].call_id != call.call_id \
                    or stored.status != "in_call":
                continue  # not this call's reservation (finished, lost, or never made)
            number = self._number(lead.phone)
            self._locks.pop(number, None)
            if self._day_counts.get((number, day_key), 0) > 0:
                self._day_counts[(number, day_key)] -= 1
            times = self._recent.get(number)
            if times and times[-1] == lost[1]:
                times.pop()
            del self._lost[key], self._before_call[key]
            stored.attempts -= 1
            stored.status = before[0]
            if before[1] is None:
                self._lease_until.pop(key, None)
            else:
                self._lease_until[key] = before[1]
                self._waiting[lead.campaign_id].push((before[1], next(self._seq), lead.lead_id))

    async def finish_attempt(self, call: CallAttempt, result: CallResult, *, now: float,
                             next_eligible: float | None, abandoned: bool, live: bool,
                             invalid_number: bool = False) -> None:
        lead = call.lead
        if call.call_id in self._finished:
            return  # already recorded (a retried write, or the attempt was given up as lost)
        self._finished.add(call.call_id)
        number = self._number(lead.phone)
        key = (lead.campaign_id, lead.lead_id)
        self._locks.pop(number, None)
        self._lost.pop(key, None)
        self._before_call.pop(key, None)
        self._lease_until.pop(key, None)
        row = result.as_row()
        self._results[call.campaign_id].append(row)
        self._history[key].append(row)
        if live:
            minute = abandon_bucket(now)
            bucket = self._abandon_buckets[call.campaign_id].setdefault(minute, [0, 0])
            span = self._abandon_span.setdefault(call.campaign_id, [minute, minute, 0, 0])
            span[0], span[1] = min(span[0], minute), max(span[1], minute)
            bucket[1] += 1
            span[3] += 1
            if abandoned:
                bucket[0] += 1
                span[2] += 1
                self._last_abandon[number] = now
        if invalid_number:
            self._invalid.add(number)
        self._reschedule(self._leads[key], next_eligible)

    async def record_block(self, campaign_id: str, lead: Lead, veto: Veto, *, now: float) -> None:
        self._blocks[campaign_id].append(
            {"lead_id": lead.lead_id, "rule": veto.rule, "reason": veto.reason, "at": now}
        )

    async def abandon_counts(self, campaign_id: str, *, since: float, now: float) -> AbandonCounts:
        first, last = abandon_bucket(since), abandon_bucket(now)
        span = self._abandon_span.get(campaign_id)
        if span is not None and first <= span[0] and span[1] <= last:
            return AbandonCounts(span[2], span[3])  # the window holds every bucket: the running totals
        abandoned = live = 0
        for bucket, (a, n) in self._abandon_buckets.get(campaign_id, {}).items():
            if first <= bucket <= last:
                abandoned += a
                live += n
        return AbandonCounts(abandoned, live)

    async def add_dnc(self, phones: Iterable[str], campaign_id: str | None = None) -> int:
        target = self._dnc if campaign_id is None else self._dnc_campaign[campaign_id]
        before = len(target)
        target.update(self._index(p) for p in phones)
        return len(target) - before

    async def invalid_numbers(self, phones: Iterable[str]) -> list[bool]:
        return [self._index(p) in self._invalid for p in phones]

    # -- reading -----------------------------------------------------------------------

    async def lead_counts(self, campaign_id: str) -> dict[str, int]:
        counts: dict[str, int] = {"pending": 0, "leased": 0, "in_call": 0, "done": 0}
        for (cid, _), lead in self._leads.items():
            if cid == campaign_id:
                counts[lead.status] = counts.get(lead.status, 0) + 1
        return counts

    async def lead_zones(self, campaign_id: str) -> set[str]:
        return set(self._zones.get(campaign_id, ()))

    async def next_eligible_at(self, campaign_id: str) -> float | None:
        times = [
            lead.next_eligible if lead.status == "pending" else self._lease_until.get(key, 0.0)
            for key, lead in self._leads.items()
            if key[0] == campaign_id and lead.status in ("pending", "leased")
        ]
        return min(times) if times else None

    async def results(self, campaign_id: str) -> list[dict[str, Any]]:
        return list(self._results.get(campaign_id, ()))

    async def blocks(self, campaign_id: str) -> list[dict[str, Any]]:
        return list(self._blocks.get(campaign_id, ()))

    async def warm_up(self) -> None:
        return None

    async def close(self) -> None:
        return None
