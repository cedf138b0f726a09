"""The compliance report: what a regulator (or the operator answering one) asks for.

Per regulatory window (24 h for Ofcom, 30 days for the TCPA/TSR): dials, live
answers, abandoned calls and the abandon rate -- abandoned / live answers, as
``../shared/DESIGN.md`` defines it, never over all dials -- and the attempts the
gate or the reservation refused, by rule. Everything is read through the
``Store`` protocol, so the report is the same for the in-memory and the Redis
store; live answers and abandons come from the store's minute buckets
(campaign-wide, every node), the very counts the abandon controller works on.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from engine.store.base import Store


def window_label(seconds: float) -> str:
    """``86400`` -> ``"24h"``, ``2592000`` -> ``"30d"``."""
    if seconds % 86_400 == 0 and seconds >= 2 * 86_400:
        return f"{int(seconds // 86_400)}d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{seconds:g}s"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _started(row: dict[str, Any]) -> float | None:
    text = row.get("started") or ""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


async def compliance_report(store: Store, campaign_id: str, *, now: float, windows: list[float]) -> dict[str, Any]:
    """Figures per window ending at ``now`` (wall clock): dials, live answers, abandons, abandon
    rate and blocked attempts by rule; plus the blocks over all recorded time."""
    rows = await store.results(campaign_id)
    blocks = await store.blocks(campaign_id)
    started = [t for t in (_started(r) for r in rows) if t is not None]
    out_windows = []
    for w in windows:
        since = now - w
        counts = await store.abandon_counts(campaign_id, since=since, now=now)
        by_rule = Counter(str(b["rule"]) for b in blocks if since <= float(b["at"]) <= now)
        out_windows.append({
            "window_s": float(w),
            "label": window_label(w),
            "since": _iso(since),
            "dials": sum(1 for t in started if since <= t <= now),
            "live": counts.live,
            "abandoned": counts.abandoned,
            "abandon_rate": counts.rate,
            "blocked": dict(sorted(by_rule.items())),
            "blocked_total": sum(by_rule.values()),
        })
    return {
        "campaign": campaign_id,
        "at": _iso(now),
        "windows": out_windows,
        "blocked_all": dict(sorted(Counter(str(b["rule"]) for b in blocks).items())),
        "results_total": len(rows),
    }


def format_compliance_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table (fixed-width, for a terminal or an e-mail)."""
    lines = [f"Compliance report: campaign {report['campaign']} at {report['at']}", ""]
    header = f"{'window':<8} {'since':<26} {'dials':>8} {'live':>8} {'abandoned':>10} {'rate':>8} {'blocked':>8}"
    lines += [header, "-" * len(header)]
    for w in report["windows"]:
        rate = f"{100 * w['abandon_rate']:.2f} %" if w["live"] else "-"
        lines.append(f"{w['label']:<8} {w['since']:<26} {w['dials']:>8} {w['live']:>8} {w['abandoned']:>10} "
                     f"{rate:>8} {w['blocked_total']:>8}")
    rules = sorted(set(report["blocked_all"]) | {r for w in report["windows"] for r in w["blocked"]})
    lines += ["", "Blocked attempts by rule"]
    if not rules:
        lines.append("(none)")
        return "\n".join(lines) + "\n"
    width = max(len("rule"), *(len(r) for r in rules))
    labels = [w["label"] for w in report["windows"]]
    header = f"{'rule':<{width}} " + " ".join(f"{label:>8}" for label in labels) + f" {'all':>8}"
    lines += [header, "-" * len(header)]
    for rule in rules:
        cells = " ".join(f"{w['blocked'].get(rule, 0):>8}" for w in report["windows"])
        lines.append(f"{rule:<{width}} {cells} {report['blocked_all'].get(rule, 0):>8}")
    return "\n".join(lines) + "\n"
