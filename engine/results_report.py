"""Campaign results report: contacts by tier and customer type, conversion, follow-ups.

Read from the results files (CSV or JSONL) the engine writes, so it works the
same for a finished simulated demo and for a production campaign.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from engine.config import CampaignConfig


def read_results(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _true(v: Any) -> bool:
    return v is True or str(v).lower() == "true"


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
    return "\n".join(lines)
