"""Campaign results report: contacts by tier and customer type, conversion, follow-ups, each agent's
calls, conversions and talk time, and the day hour by hour (dials, live answers, abandons, the abandon
rate so far against the target).

Read from the results files (CSV or JSONL) the engine writes, so it works the
same for a finished simulated demo and for a production campaign.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engine.config import CampaignConfig


def read_results(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _true(v: Any) -> bool:
    return v is True or str(v).lower() == "true"


LIVE = frozenset({"connected", "abandoned", "customer_hangup"})  # as Outcome.live: the abandon-rate denominator


def by_hour(rows: list[dict[str, Any]], cfg: CampaignConfig) -> list[dict[str, Any]]:
    """Per hour of the campaign's local time (in time order): dials, live answers, contacts, abandons,
    and the abandon rate of all calls up to the end of that hour -- what an operator watches against
    the cap as the day goes on."""
    zone = ZoneInfo(cfg.campaign.timezone)
    hours: dict[str, dict[str, Any]] = {}
    for r in rows:
        started = r.get("started")
        if not started:
            continue
        key = datetime.fromisoformat(str(started)).astimezone(zone).strftime("%Y-%m-%d %H:00")
        h = hours.setdefault(key, {"hour": key, "dials": 0, "live": 0, "contacts": 0, "abandoned": 0})
        outcome = r.get("outcome")
        h["dials"] += 1
        h["live"] += outcome in LIVE
        h["contacts"] += outcome == "connected"
        h["abandoned"] += outcome == "abandoned"
    live = abandoned = 0
    out = []
    for key in sorted(hours):
        h = hours[key]
        live, abandoned = live + h["live"], abandoned + h["abandoned"]
        out.append({**h, "abandon_rate_so_far": round(abandoned / live, 4) if live else 0.0})
    return out


def by_agent(rows: list[dict[str, Any]], success: set[str]) -> dict[str, dict[str, Any]]:
    """Per agent: calls taken, conversions and their rate, talk minutes and the mean call -- what a
    supervisor coaches on. Only calls an agent took (connected) count."""
    agents: dict[str, dict[str, Any]] = {}
    for r in rows:
        agent = r.get("agent_id")
        if not agent or r.get("outcome") != "connected":
            continue
        a = agents.setdefault(str(agent), {"calls": 0, "conversions": 0, "talk_s": 0.0})
        a["calls"] += 1
        a["conversions"] += r.get("disposition") in success
        try:
            a["talk_s"] += float(r.get("talk_s") or 0.0)
        except ValueError:
            pass
    return {name: {"calls": a["calls"], "conversions": a["conversions"],
                   "conversion_rate": round(a["conversions"] / a["calls"], 4),
                   "talk_min": round(a["talk_s"] / 60, 1), "mean_call_s": round(a["talk_s"] / a["calls"], 1)}
            for name, a in sorted(agents.items())}


def summarize_results(rows: list[dict[str, Any]], cfg: CampaignConfig) -> dict[str, Any]:
    success = {name for name, d in cfg.dispositions.items() if d.success}
    creates = {name for name, d in cfg.dispositions.items() if d.follow_up is not None or d.customer_follow_ups}

    def blank() -> dict[str, int]:
        return {"dials": 0, "contacts": 0, "conversions": 0, "abandoned": 0}

    by_tier: dict[str, dict[str, int]] = defaultdict(blank)
    by_type: dict[str, dict[str, int]] = defaultdict(blank)
    follow_ups = {"created": 0, "completed": 0, "attempted": 0}
    for r in rows:
        tier = r.get("tier")
        keys = (by_tier["?" if tier in (None, "") else str(tier)], by_type[str(r.get("customer_type") or "unknown")])
        outcome = r.get("outcome")
        for k in keys:
            k["dials"] += 1
            k["contacts"] += outcome == "connected"
            k["conversions"] += r.get("disposition") in success
            k["abandoned"] += outcome == "abandoned"
        if outcome == "connected" and r.get("disposition") in creates:
            follow_ups["created"] += 1
        if _true(r.get("follow_up")):
            follow_ups["attempted"] += 1
            follow_ups["completed"] += outcome == "connected"
    total = blank()
    for t in by_tier.values():
        for k in total:
            total[k] += t[k]

    def rates(d: dict[str, int]) -> dict[str, Any]:
        return {**d, "conversion_rate": round(d["conversions"] / d["contacts"], 4) if d["contacts"] else 0.0}

    return {
        "total": rates(total),
        "by_tier": {k: rates(v) for k, v in sorted(by_tier.items())},
        "by_customer_type": {k: rates(v) for k, v in sorted(by_type.items())},
        "follow_ups": follow_ups,
        "by_hour": by_hour(rows, cfg),
        "by_agent": by_agent(rows, success),
        "abandon_target": cfg.abandon.target / 100.0,
    }


def format_results_report(report: dict[str, Any]) -> str:
    lines = [f"{'group':<28}{'dials':>8}{'contacts':>10}{'conversions':>13}{'conv. rate':>12}{'abandoned':>11}"]

    def row(name: str, d: dict[str, Any]) -> str:
        return (f"{name:<28}{d['dials']:>8}{d['contacts']:>10}{d['conversions']:>13}"
                f"{d['conversion_rate'] * 100:>11.1f}%{d['abandoned']:>11}")

    lines.append(row("all", report["total"]))
    for k, v in report["by_tier"].items():
        lines.append(row(f"tier {k}", v))
    for k, v in report["by_customer_type"].items():
        lines.append(row(f"type {k}", v))
    f = report["follow_ups"]
    lines.append(f"follow-ups: {f['created']} created, {f['attempted']} dialled when due, {f['completed']} completed")
    if report.get("by_agent"):
        lines += ["", f"{'agent':<18}{'calls':>8}{'conversions':>13}{'conv. rate':>12}{'talk min':>10}"
                      f"{'mean call s':>13}"]
        for name, a in report["by_agent"].items():
            lines.append(f"{name:<18}{a['calls']:>8}{a['conversions']:>13}{a['conversion_rate'] * 100:>11.1f}%"
                         f"{a['talk_min']:>10}{a['mean_call_s']:>13}")
    if report.get("by_hour"):
        lines += ["", f"{'hour':<18}{'dials':>8}{'live':>8}{'contacts':>10}{'abandoned':>11}{'rate so far':>13}"]
        for h in report["by_hour"]:
            lines.append(f"{h['hour']:<18}{h['dials']:>8}{h['live']:>8}{h['contacts']:>10}{h['abandoned']:>11}"
                         f"{h['abandon_rate_so_far'] * 100:>12.2f}%")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: str | Path, title: str) -> Path:
    """A PNG of the day: dials and contacts per hour (bars), the abandon rate so far against the target
    (line). matplotlib is an optional dependency (extra ``charts``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("charts need matplotlib: pip install 'dialer-engine[charts]'") from exc
    hours = report["by_hour"]
    labels = [h["hour"][-5:] if i and hours[i - 1]["hour"][:10] == h["hour"][:10] else h["hour"]
              for i, h in enumerate(hours)]
    x = range(len(hours))
    fig, left = plt.subplots(figsize=(max(6.0, 0.6 * len(hours) + 2), 4.5))
    left.bar([i - 0.2 for i in x], [h["dials"] for h in hours], width=0.4, label="dials", color="#9db4d3")
    left.bar([i + 0.2 for i in x], [h["contacts"] for h in hours], width=0.4, label="contacts", color="#2f6db3")
    left.set_ylabel("calls per hour")
    left.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=8)
    right = left.twinx()
    right.plot(list(x), [100 * h["abandon_rate_so_far"] for h in hours], color="#c0392b", marker="o",
               label="abandon rate so far")
    right.axhline(100 * report["abandon_target"], color="#c0392b", linestyle="--", label="target")
    right.set_ylabel("abandoned / live answers (%)")
    right.set_ylim(0, max(100 * report["abandon_target"] * 2, *(100 * h["abandon_rate_so_far"] for h in hours)))
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    names = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(handles, names, loc="upper left", fontsize=8)
    left.set_title(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
