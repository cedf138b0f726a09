"""Built-in compliance rules: the pre-dial gate every campaign runs, and refusals honoured at once.

This module is the plugin (entry point ``compliance = "plugins.compliance"`` in
the ``dialer.plugins`` group). Each rule is switched and tuned per campaign in
``[compliance]`` and ``[hours]`` (``engine.compliance_config``):

=============================  ===========================================================  ==========
rule                           vetoes a dial when                                           retry_at
=============================  ===========================================================  ==========
``compliance.invalid_number``  the number was found invalid on an earlier call              never
``compliance.dnc``             the number is on the global or the campaign's DNC list       never
``compliance.consent``         consent is required and missing, not accepted or expired     never
``compliance.cap_lifetime``    the lead has had ``caps.lifetime`` attempts                  never
``compliance.cap_per_day``     ``caps.per_day`` calls already on the called party's date    next local day
``compliance.cap_24h``         ``caps.per_24h`` calls in the last 24 h                      in an hour
``compliance.after_abandon``   an abandoned call to the number less than 72 h ago (Ofcom)   72 h after it
``compliance.holiday``         the local date is a holiday in ``hours.holidays``            next opening
``compliance.hours``           outside the local window (per weekday, default 08:00-21:00)  next opening
=============================  ===========================================================  ==========

Every rule is evaluated. A veto that says "never" wins (the lead is closed);
otherwise the veto with the latest ``retry_at`` is returned, its time moved on to
the next opening of the calling window, so the lead comes back when every rule
can pass rather than bouncing from one rule to the next.

Local time is the lead's ``timezone``; failing that, every time zone the number
may be in (``phonenumbers``) -- a number spanning several zones is only called
when the window is open in all of them, the most restrictive reading; failing
that, the campaign's ``timezone``.

After the call, a disposition that is a refusal or a DNC request
(``compliance.dnc_dispositions``, or any disposition with ``dnc = true``) puts the
number on the global DNC list through the store, effective at once for every
campaign and engine node (the reservation re-checks DNC atomically). Invalid
numbers are marked by the store itself when the attempt is finished with
``Outcome.INVALID_NUMBER``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as pn_timezone

from engine.hooks import hookimpl
from engine.models import Veto

RETRY_24H_S = 3600.0  # a number at its 24 h cap is looked at again after this
SEARCH_DAYS = 14  # how far ahead the next common opening of the calling window is searched


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@functools.lru_cache(maxsize=65_536)
def _number_zones(phone: str) -> tuple[str, ...]:
    try:
        names = pn_timezone.time_zones_for_number(phonenumbers.parse(phone))
    except phonenumbers.NumberParseException:
        return ()
    return tuple(z for z in names if z != pn_timezone.UNKNOWN_TIMEZONE)


def zones_for(lead: Any, campaign: Any) -> list[ZoneInfo]:
    """The time zones whose calling window must be open for this lead (see the module docstring).

    A lead time zone that does not exist (a typo in the import) is ignored, not fatal: the
    number's zones are the safe reading, and failing here would close the lead for good.
    """
    if lead.timezone:
        try:
            return [_zone(lead.timezone)]
        except (ZoneInfoNotFoundError, ValueError):
            pass
    if campaign.compliance.zones_from_number:
        names = _number_zones(lead.phone)
        if names:
            return [_zone(z) for z in names]
    return [_zone(campaign.campaign.timezone)]


@functools.lru_cache(maxsize=1024)
def _local(ts: float, zone: ZoneInfo) -> tuple[date, time]:
    """The local date and (naive) time of POSIX time ``ts`` in ``zone``: the dials of a burst share one
    ``ts``, so each zone's is worked out once for them."""
    local = datetime.fromtimestamp(ts, zone)
    return local.date(), local.time()


def _open_at(hours: Any, ts: float, zone: ZoneInfo) -> bool:
    day, clock = _local(ts, zone)
    window = hours.window(day)
    return window is not None and window[0] <= clock < window[1]


def _next_opening(hours: Any, ts: float, zone: ZoneInfo) -> float | None:
    """The first instant at or after ``ts`` when the window is open in ``zone``."""
    if _open_at(hours, ts, zone):
        return ts
    today = datetime.fromtimestamp(ts, zone).date()
    for k in range(SEARCH_DAYS + 1):
        day = today + timedelta(days=k)
        window = hours.window(day)
        if window is None:
            continue
        opening = datetime.combine(day, window[0], tzinfo=zone).timestamp()
        if opening >= ts and _open_at(hours, opening, zone):
            return opening
    return None


def next_common_opening(hours: Any, ts: float, zones: Iterable[ZoneInfo]) -> float | None:
    """The first instant at or after ``ts`` when the window is open in every zone, or None
    when there is none within two weeks (the zones' windows never overlap)."""
    zones = list(zones)
    t = ts
    for _ in range(8 * len(zones) * (SEARCH_DAYS + 1)):
        moved = False
        for zone in zones:
            nxt = _next_opening(hours, t, zone)
            if nxt is None or nxt - ts > SEARCH_DAYS * 86_400:
                return None
            if nxt > t:
                t, moved = nxt, True
        if not moved:
            return t
    return None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _hours_veto(ctx: Any, campaign: Any) -> Veto | None:
    hours = campaign.hours
    zones = zones_for(ctx.lead, campaign)
    closed = [z for z in zones if not _open_at(hours, ctx.now, z)]
    if not closed:
        return None
    local = datetime.fromtimestamp(ctx.now, closed[0])
    retry = next_common_opening(hours, ctx.now, zones)
    names = ", ".join(z.key for z in closed)
    if local.date() in hours.holidays:
        return Veto("compliance.holiday", f"{local.date().isoformat()} is a holiday ({names})", retry)
    window = hours.window(local.date())
    shown = f"{window[0]:%H:%M}-{window[1]:%H:%M}" if window else "closed"
    why = f"local time {local:%a %H:%M} in {names} is outside the calling window ({shown})"
    if retry is None:
        why += "; the window is never open in every zone of this number at once"
    return Veto("compliance.hours", why, retry)


def _next_local_day(ctx: Any, campaign: Any) -> float:
    zone = _zone(ctx.lead.timezone or campaign.campaign.timezone)
    try:
        day = date.fromisoformat(ctx.day_key)
    except ValueError:
        day = datetime.fromtimestamp(ctx.now, zone).date()
    return datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=zone).timestamp()


def evaluate(ctx: Any, campaign: Any) -> list[Veto]:
    """Every rule's veto on this dial (empty: the dial may go out). Pure: for tests and reports."""
    c, lead, out = campaign.compliance, ctx.lead, []
    if c.invalid_numbers and ctx.invalid_number:
        out.append(Veto("compliance.invalid_number", "number found invalid on an earlier call"))
    if c.dnc and ctx.dnc:
        out.append(Veto("compliance.dnc", "number is on a do-not-call list"))
    if c.require_consent:
        if not lead.consent_source:
            out.append(Veto("compliance.consent", "no consent recorded for this lead"))
        elif c.consent_sources and lead.consent_source not in c.consent_sources:
            out.append(Veto("compliance.consent", f"consent source {lead.consent_source!r} is not accepted"))
        elif lead.consent_expires is not None and _aware(lead.consent_expires).timestamp() <= ctx.now:
            out.append(Veto("compliance.consent", f"consent expired on {_aware(lead.consent_expires):%Y-%m-%d}"))
    if c.caps:
        caps = campaign.caps
        if lead.attempts >= caps.lifetime:
            out.append(Veto("compliance.cap_lifetime", f"{caps.lifetime} attempts already made"))
        if ctx.attempts_today >= caps.per_day:
            out.append(Veto("compliance.cap_per_day", f"{caps.per_day} calls already on {ctx.day_key}",
                            _next_local_day(ctx, campaign)))
        if ctx.attempts_24h >= caps.per_24h:
            out.append(Veto("compliance.cap_24h", f"{caps.per_24h} calls in the last 24 h",
                            ctx.now + RETRY_24H_S))
    if c.abandon_no_repeat > 0 and ctx.last_abandoned_at is not None:
        until = ctx.last_abandoned_at + c.abandon_no_repeat
        if ctx.now < until:
            out.append(Veto("compliance.after_abandon",
                            f"an abandoned call to this number {(ctx.now - ctx.last_abandoned_at) / 3600:.1f} h ago "
                            f"(no call within {c.abandon_no_repeat / 3600:g} h)", until))
    if c.hours:
        veto = _hours_veto(ctx, campaign)
        if veto is not None:
            out.append(veto)
    return out


def decide(vetoes: list[Veto], ctx: Any, campaign: Any) -> Veto | None:
    """The one veto to act on: a permanent one first, else the one that clears last, its retry
    moved to the next opening of the calling window (a lead due at midnight waits for 08:00)."""
    if not vetoes:
        return None
    for veto in vetoes:
        if veto.retry_at is None:
            return veto
    last = max(vetoes, key=lambda v: v.retry_at or 0.0)
    assert last.retry_at is not None
    if campaign.compliance.hours:
        opening = next_common_opening(campaign.hours, last.retry_at, zones_for(ctx.lead, campaign))
        if opening is not None and opening != last.retry_at:
            return Veto(last.rule, last.reason, opening)
    return last


@hookimpl
def dialer_check_dial(ctx: Any, campaign: Any) -> Veto | None:
    """The built-in compliance gate (see the module docstring for the rules)."""
    return decide(evaluate(ctx, campaign), ctx, campaign)


@hookimpl
def dialer_after_call(call: Any, result: Any, campaign: Any, store: Any) -> Any:
    """A refusal or DNC request puts the number on the global DNC list at once (idempotent with the
    engine's own handling of ``dnc = true`` dispositions, and covering dispositions configured without it)."""
    disposition = call.disposition
    if disposition is None:
        return None
    rule = campaign.dispositions.get(disposition)
    if disposition in campaign.compliance.dnc_dispositions or (rule is not None and rule.dnc):
        return store.add_dnc([call.lead.phone])
    return None
