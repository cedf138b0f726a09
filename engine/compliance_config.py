"""Campaign configuration for the legal rules: calling hours and the compliance section.

Kept apart from ``engine.config`` because the compliance plugins own these
rules; ``engine.config`` only includes the sections. Defaults are the safe
side of the US TCPA and UK Ofcom rules: 08:00-21:00 in the called party's
local time, no call within 72 h of an abandoned one, refusals and DNC requests
honoured at once everywhere. Not legal advice: a campaign states its own rules.
"""

from __future__ import annotations

import re
from datetime import date, time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def parse_clock(value: Any) -> time:
    """A time of day from ``"08:00"``; ``"24:00"`` means the end of the day."""
    if isinstance(value, time):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}", value.strip()):
        hh, mm = (int(x) for x in value.strip().split(":"))
        if hh == 24 and mm == 0:
            return time(23, 59, 59)
        if hh < 24 and mm < 60:
            return time(hh, mm)
    raise ValueError(f"{value!r} is not a time of day such as \"08:00\"")


_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_seconds(value: Any) -> float:
    """A duration (``259200``, ``"72h"``, ``"3d"``); kept here so this module needs nothing from
    ``engine.config`` (which imports it)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|min|m|h|d)?\s*", value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    raise ValueError(f"{value!r} is not a duration such as \"72h\" or \"3d\" (zero or more)")


ClockTime = Annotated[time, BeforeValidator(parse_clock)]
Seconds = Annotated[float, BeforeValidator(parse_seconds)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DayWindow(_Section):
    """One day's calling window (local time of the called party); the end is excluded."""

    start: ClockTime
    end: ClockTime

    @model_validator(mode="after")
    def _order(self) -> DayWindow:
        if self.end <= self.start:
            raise ValueError(f"end {self.end:%H:%M} is not after start {self.start:%H:%M}")
        return self


class HoursSection(_Section):
    """Calling window in the called party's local time (TCPA default 08:00-21:00).

    ``days`` overrides the window per weekday (``sat = { start = "10:00", end = "17:00" }``,
    ``sun = "closed"``); ``holidays`` are local dates with no calls at all.
    """

    start: ClockTime = time(8, 0)
    end: ClockTime = time(21, 0)
    days: dict[Weekday, DayWindow | Literal["closed"]] = Field(default_factory=dict)
    holidays: list[date] = Field(default_factory=list)

    @model_validator(mode="after")
    def _order(self) -> HoursSection:
        if self.end <= self.start:
            raise ValueError(f"end {self.end:%H:%M} is not after start {self.start:%H:%M}")
        return self

    def window(self, day: date) -> tuple[time, time] | None:
        """The window on a local date, or None when no call may be made that day."""
        if day in self.holidays:
            return None
        override = self.days.get(WEEKDAYS[day.weekday()])  # type: ignore[call-overload]
        if override == "closed":
            return None
        if isinstance(override, DayWindow):
            return override.start, override.end
        return self.start, self.end


class ComplianceSection(_Section):
    """Per-campaign switches of the built-in compliance rules (see plugins/compliance).

    Each rule vetoes with the rule name ``compliance.<rule>``. The store's own
    reservation checks (DNC, invalid, caps, in-flight) run after the gate whatever
    is set here; switching a rule off here only stops the gate from rescheduling
    on it first.
    """

    dnc: bool = True  # numbers on the global or the campaign's DNC / blacklist are never dialled
    invalid_numbers: bool = True  # numbers found invalid (hangup causes 1, 22, 28) are never dialled again
    require_consent: bool = False  # only leads with a recorded, unexpired consent are dialled
    consent_sources: list[str] = Field(default_factory=list)  # accepted consent sources; empty = any
    caps: bool = True  # per-contact caps ([caps]) checked before the dial, with a retry time
    hours: bool = True  # calling window ([hours]) in the called party's local time
    zones_from_number: bool = True  # no lead time zone: every zone the number may be in must be open
    # Ofcom: no call to a number within this after an abandoned call to it; 0 = off. At most 7 days:
    # the store keeps the last-abandon mark for 8.
    abandon_no_repeat: Seconds = Field(default=72 * 3600.0, le=7 * 86_400.0)
    dnc_dispositions: list[str] = Field(default_factory=lambda: ["refused", "dnc_request"])
