"""Campaign configuration for the legal rules: calling hours and the compliance section.

Kept apart from ``engine.config`` because the compliance plugins own these
rules; ``engine.config`` only includes the sections.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator


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


ClockTime = Annotated[time, BeforeValidator(parse_clock)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HoursSection(_Section):
    """Calling window in the called party's local time (TCPA default 08:00-21:00)."""

    start: ClockTime = time(8, 0)
    end: ClockTime = time(21, 0)

    @model_validator(mode="after")
    def _order(self) -> HoursSection:
        if self.end <= self.start:
            raise ValueError(f"end {self.end:%H:%M} is not after start {self.start:%H:%M}")
        return self


class ComplianceSection(_Section):
    """Per-campaign switches of the built-in compliance rules (see plugins/compliance)."""
