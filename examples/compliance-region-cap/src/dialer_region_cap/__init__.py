"""A state-specific calling rule as a dialer compliance plugin.

To numbers in the configured region: at most 3 calls in any rolling 24 hours,
and only between 08:00 and 20:00 in the called party's local time. The default
region is Florida (its area codes), whose Telephone Solicitation Act has this
shape; this is an example of the plugin contract, not legal advice.

Configuration, in the campaign file (checked by ``dialer check`` and before a
campaign starts, so a typo stops the campaign instead of silently changing the
rule)::

    [plugin.region_cap]
    regions = ["+1305", "+1786", "GB"]  # E.164 prefixes and/or ISO 3166 region codes; default: Florida
    max_24h = 3                         # calls allowed per number in any 24 h
    hours = "08:00-20:00"               # the local calling window; the end is excluded

Each key may also come from the environment, for a whole deployment
(``DIALER_REGION_CAP_REGIONS`` as a comma-separated list,
``DIALER_REGION_CAP_MAX_24H``, ``DIALER_REGION_CAP_HOURS``); the campaign's
table wins over the environment.

The called party's local time comes from the lead's ``timezone`` when the lead
has one, else from every time zone the number may be in (the window must be
open in all of them: an unsure guess can only block a call, never allow one),
else from the campaign's time zone.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as pn_timezone

from engine.hooks import hookimpl
from engine.models import Veto

__version__ = "0.1.0"

RULE_24H = "region_cap.per_24h"
RULE_HOURS = "region_cap.hours"
RULE_NUMBER = "region_cap.bad_number"

FLORIDA = ("+1239", "+1305", "+1321", "+1324", "+1352", "+1386", "+1407", "+1448", "+1561", "+1645", "+1656",
           "+1689", "+1727", "+1728", "+1754", "+1772", "+1786", "+1813", "+1850", "+1863", "+1904", "+1941",
           "+1954")
DEFAULTS = {
    "DIALER_REGION_CAP_REGIONS": ",".join(FLORIDA),
    "DIALER_REGION_CAP_MAX_24H": "3",
    "DIALER_REGION_CAP_HOURS": "08:00-20:00",
}
RECHECK_S = 3600.0  # a capped number is looked at again after this


@dataclass(frozen=True)
class Settings:
    prefixes: tuple[str, ...]  # E.164 prefixes, "+1305"
    regions: tuple[str, ...]  # ISO 3166 region codes, "GB"
    max_24h: int
    start: time
    end: time

    def region_of(self, phone: str) -> str | None:
        """The configured prefix or region this number falls in, or None."""
        for prefix in self.prefixes:
            if phone.startswith(prefix):
                return prefix
        if self.regions:
            region = phonenumbers.region_code_for_number(phonenumbers.parse(phone))
            if region in self.regions:
                return region
        return None

    @property
    def hours(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


KEYS = {"regions": "DIALER_REGION_CAP_REGIONS", "max_24h": "DIALER_REGION_CAP_MAX_24H",
        "hours": "DIALER_REGION_CAP_HOURS"}


def _clock(text: str, var: str) -> time:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ValueError(f"{var}: {text!r} is not a time of day such as 08:00")
    return time(int(m.group(1)), int(m.group(2)))


@functools.lru_cache(maxsize=8)
def _parse(regions: str, max_24h: str, hours: str, names: tuple[str, str, str]) -> Settings:
    """Settings from their text forms; ``names`` say where each came from, for the error message."""
    regions_name, max_name, hours_name = names
    prefixes, codes = [], []
    for item in (x.strip() for x in regions.split(",")):
        if re.fullmatch(r"\+\d{1,15}", item):
            prefixes.append(item)
        elif re.fullmatch(r"[A-Za-z]{2}", item):
            codes.append(item.upper())
        elif item:
            raise ValueError(f"{regions_name}: {item!r} is neither an E.164 prefix (+1305) nor a region code (GB)")
    if not prefixes and not codes:
        raise ValueError(f"{regions_name}: no region given")
    if not max_24h.strip().isdigit() or int(max_24h) < 1:
        raise ValueError(f"{max_name}: {max_24h!r} is not a whole number of calls (1 or more)")
    start_text, sep, end_text = hours.partition("-")
    if not sep:
        raise ValueError(f"{hours_name}: {hours!r} is not a window such as 08:00-20:00")
    start = _clock(start_text, hours_name)
    end = _clock(end_text, hours_name)
    if end <= start:
        raise ValueError(f"{hours_name}: {hours!r} ends before it starts")
    return Settings(tuple(prefixes), tuple(codes), int(max_24h), start, end)


def _table(campaign) -> dict:
    return dict((getattr(campaign, "plugin", None) or {}).get("region_cap", {}))


def settings(campaign=None) -> Settings:
    """The rule's settings: the campaign's ``[plugin.region_cap]`` table, else the environment, else
    the defaults (Florida, 3 calls, 08:00-20:00)."""
    table = _table(campaign)
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key (known: {', '.join(KEYS)})")
    texts, names = [], []
    for key, var in KEYS.items():
        if key in table:
            value = table[key]
            texts.append(",".join(map(str, value)) if isinstance(value, list) else str(value))
            names.append(key)
        else:
            texts.append(os.environ.get(var, DEFAULTS[var]))
            names.append(var)
    return _parse(*texts, tuple(names))


def _zones(lead, campaign) -> list[ZoneInfo]:
    if lead.timezone:
        return [ZoneInfo(lead.timezone)]
    try:
        names = [z for z in pn_timezone.time_zones_for_number(phonenumbers.parse(lead.phone))
                 if z != pn_timezone.UNKNOWN_TIMEZONE]
    except phonenumbers.NumberParseException:
        names = []
    return [ZoneInfo(z) for z in names] or [ZoneInfo(campaign.campaign.timezone)]


def _next_opening(now: float, zone: ZoneInfo, start: time) -> float:
    local = datetime.fromtimestamp(now, zone)
    day = local.date() if local.time() < start else local.date() + timedelta(days=1)
    return datetime.combine(day, start, tzinfo=zone).timestamp()


@hookimpl
def dialer_check_settings(campaign) -> list[str] | None:
    """``dialer check`` and the campaign start report a bad setting by its key, before any dial."""
    try:
        settings(campaign)
    except ValueError as exc:
        return [str(exc)]
    return None


@hookimpl
def dialer_campaign_start(campaign, store) -> None:
    """Refuse to start with settings that do not parse (raises ValueError naming the key)."""
    settings(campaign)


@hookimpl
def dialer_check_dial(ctx, campaign) -> Veto | None:
    """Veto a dial to a number in the region past its 24 h cap or outside the local window."""
    s = settings(campaign)
    try:
        region = s.region_of(ctx.lead.phone)
    except phonenumbers.NumberParseException as exc:
        return Veto(RULE_NUMBER, f"cannot tell the region of this number: {exc}")
    if region is None:
        return None
    if ctx.attempts_24h >= s.max_24h:
        return Veto(RULE_24H, f"{ctx.attempts_24h} calls to this number in the last 24 h; "
                    f"at most {s.max_24h} allowed in {region}", retry_at=ctx.now + RECHECK_S)
    closed = [z for z in _zones(ctx.lead, campaign)
              if not s.start <= datetime.fromtimestamp(ctx.now, z).time() < s.end]
    if closed:
        local = datetime.fromtimestamp(ctx.now, closed[0])
        return Veto(RULE_HOURS, f"{local:%H:%M} in {closed[0].key} is outside {s.hours} for {region}",
                    retry_at=max(_next_opening(ctx.now, z, s.start) for z in closed))
    return None
