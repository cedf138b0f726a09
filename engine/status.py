"""Live figures of a running campaign, for the terminal.

In a terminal the view is redrawn in place (rich); otherwise one plain line is
printed now and then, so a log file or CI output stays readable. Rendering is
throttled by wall time, so a virtual-time run is not slowed down by it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from engine.dialer import Dialer
from engine.models import AgentState


def figures(dialer: Dialer, leads: dict[str, int] | None = None) -> dict[str, Any]:
    pool, c = dialer.pool, dialer.counters
    in_flight = len(dialer.calls)
    available = pool.count(AgentState.READY) + pool.count(AgentState.WRAP_UP) + pool.count(AgentState.ON_CALL)
    clock = dialer.clock.now()
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(clock)) + "Z",
        "agents": {s.value: pool.count(s) for s in AgentState if pool.count(s)},
        "in_flight": in_flight,
        "dial_ratio": round(in_flight / available, 2) if available else 0.0,
        "dials": c.dials,
        "live": c.live,
        "abandoned": c.abandoned,
        "abandon_rate": round(c.abandoned / c.live, 4) if c.live else 0.0,
        "allowance": round(dialer.controller.allowance, 4),
        "blocked": c.blocked,
        "leads_done": (leads or {}).get("done", 0),
        "leads_total": sum((leads or {}).values()),
    }


def _table(f: dict[str, Any], title: str) -> Table:
    t = Table(title=title, show_header=False)
    t.add_row("clock", f["time"])
    t.add_row("agents", "  ".join(f"{k} {v}" for k, v in f["agents"].items()) or "-")
    t.add_row("calls in flight", str(f["in_flight"]))
    t.add_row("dial ratio", f"{f['dial_ratio']:.2f}")
    t.add_row("dials / live / abandoned", f"{f['dials']} / {f['live']} / {f['abandoned']}")
    t.add_row("abandon rate", f"{f['abandon_rate'] * 100:.2f} %")
    t.add_row("blocked by the gate", str(f["blocked"]))
    if f["leads_total"]:
        t.add_row("leads finished", f"{f['leads_done']} / {f['leads_total']} "
                  f"({100 * f['leads_done'] / f['leads_total']:.1f} %)")
    return t


async def _leads(dialer: Dialer) -> dict[str, int] | None:
    try:
        return await dialer.store.lead_counts(dialer.cfg.id)
    except Exception:  # the status view must never take the campaign down
        return None


async def show(dialer: Dialer, *, every_wall_s: float = 0.5, console: Console | None = None) -> None:
    """Redraw until cancelled; owned by the caller's task group."""
    console = console or Console(file=sys.stderr)
    title = f"campaign {dialer.cfg.id} ({dialer.pacer.name})"
    if console.is_terminal:
        with Live(_table(figures(dialer), title), console=console, refresh_per_second=4) as live:
            while True:
                await _pause(every_wall_s)
                live.update(_table(figures(dialer, await _leads(dialer)), title))
    else:
        last = 0.0
        while True:
            await _pause(every_wall_s)
            if time.monotonic() - last >= 5.0:
                last = time.monotonic()
                f = figures(dialer, await _leads(dialer))
                console.print(
                    f"[status] {f['time']} in_flight={f['in_flight']} ratio={f['dial_ratio']} dials={f['dials']} "
                    f"live={f['live']} abandoned={f['abandoned']} rate={f['abandon_rate'] * 100:.2f}% "
                    f"leads_done={f['leads_done']}/{f['leads_total']} agents={f['agents']}",
                    highlight=False, soft_wrap=True,
                )


async def _pause(wall_s: float) -> None:
    """Sleep ``wall_s`` of real time in a real loop, or a stretch of virtual time that costs
    about as much wall time, so the view stays live without slowing a simulation."""
    started = time.monotonic()
    step = 1.0
    while time.monotonic() - started < wall_s:
        await asyncio.sleep(step)
        step = min(step * 2, 60.0)
