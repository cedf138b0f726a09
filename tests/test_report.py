"""The compliance report over both stores: per-window dials, live answers, abandons, rate, blocks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from engine.models import CallAttempt, CallResult, Lead, Outcome, Veto, mask_phone
from engine.report import compliance_report, format_compliance_report, window_label
from engine.store.base import Caps
from engine.store.memory import MemoryStore
from engine.store.redis import RedisStore

NOW = 1_767_628_800.0  # 2026-01-05 16:00 UTC
H, D = 3600.0, 86_400.0
CAPS = Caps(per_day=100, per_24h=100, lifetime=100, lock_s=10)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    s: Any = MemoryStore() if request.param == "memory" else RedisStore(request.getfixturevalue("redis_url"))
    yield s
    await s.close()


async def _call(store: Any, lead: Lead, n: int, at: float, outcome: Outcome) -> None:
    call = CallAttempt(call_id=f"c{n}", lead=lead, campaign_id="t", attempt_no=n)
    assert (await store.reserve_attempt(call, now=at, day_key=str(at // D), caps=CAPS, node_id="n")).ok
    result = CallResult(call_id=call.call_id, campaign_id="t", lead_id=lead.lead_id, attempt_no=n, outcome=outcome,
                        cause=16, disposition=None, agent_id=None, answer_kind=None,
                        started=datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds"), ring_s=5.0,
                        wait_s=None, talk_s=None, phone_masked=mask_phone(lead.phone))
    await store.finish_attempt(call, result, now=at + 20, next_eligible=at + 60, abandoned=outcome == Outcome.ABANDONED,
                               live=outcome.live)


async def test_report_per_window(store: Any) -> None:
    leads = [Lead(lead_id=f"L{i}", campaign_id="t", phone=f"+4420794600{i:02d}") for i in range(6)]
    await store.add_leads(leads)
    await store.claim_leads("t", 10, now=NOW - 20 * D, node_id="n", lease_s=10**8)
    plan = [(NOW - 20 * D, Outcome.ABANDONED), (NOW - 2 * D, Outcome.CONNECTED), (NOW - 23 * H, Outcome.CONNECTED),
            (NOW - 5 * H, Outcome.ABANDONED), (NOW - 1 * H, Outcome.NO_ANSWER), (NOW - 2 * H, Outcome.CUSTOMER_HANGUP)]
    for i, (lead, (at, outcome)) in enumerate(zip(leads, plan, strict=True), 1):
        await _call(store, lead, i, at, outcome)
    await store.record_block("t", leads[0], Veto("compliance.hours", "closed", NOW + H), now=NOW - 3 * H)
    await store.record_block("t", leads[1], Veto("dnc", "listed"), now=NOW - 10 * D)
    await store.record_block("t", leads[2], Veto("compliance.hours", "closed", NOW + H), now=NOW - 40 * D)

    report = await compliance_report(store, "t", now=NOW, windows=[D, 30 * D])
    day, month = report["windows"]
    assert (day["label"], month["label"]) == ("24h", "30d")
    assert (day["dials"], day["live"], day["abandoned"]) == (4, 3, 1)
    assert day["abandon_rate"] == pytest.approx(1 / 3)
    assert day["blocked"] == {"compliance.hours": 1} and day["blocked_total"] == 1
    assert (month["dials"], month["live"], month["abandoned"]) == (6, 5, 2)
    assert month["abandon_rate"] == pytest.approx(0.4)
    assert month["blocked"] == {"compliance.hours": 1, "dnc": 1}
    assert report["blocked_all"] == {"compliance.hours": 2, "dnc": 1}
    assert report["results_total"] == 6

    text = format_compliance_report(report)
    lines = text.splitlines()
    assert lines[0] == "Compliance report: campaign t at 2026-01-05T16:00:00+00:00"
    row_24h = next(line for line in lines if line.startswith("24h "))
    assert row_24h.split()[2:] == ["4", "3", "1", "33.33", "%", "1"]
    row_hours = next(line for line in lines if line.startswith("compliance.hours"))
    assert row_hours.split()[1:] == ["1", "1", "2"]
    assert "+4420" not in text  # no number in the report


async def test_report_of_an_empty_campaign(store: Any) -> None:
    report = await compliance_report(store, "none", now=NOW, windows=[D])
    assert report["windows"][0]["dials"] == 0 and report["windows"][0]["abandon_rate"] == 0.0
    text = format_compliance_report(report)
    assert "(none)" in text and " - " in text.splitlines()[4]


def test_window_labels() -> None:
    assert [window_label(w) for w in (3600, 86_400, 30 * 86_400, 90)] == ["1h", "24h", "30d", "90s"]
