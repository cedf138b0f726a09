"""Many simulated shifts in parallel processes: results table (CSV/JSON) and plots (PNG).

A *cell* is one scenario file with overrides (team size, answer rate, abandon
window, AMD, ...), one pacer and one seed; each seed is one simulated day (one
shift) run by the real engine in virtual time. Cells run in a process pool
with a progress bar. Per cell the run is sampled every few simulated minutes
(abandon rate so far, dial ratio), which gives the over-the-day plots.

Windows: each simulated day starts afresh (a new store and controller, so no
carry-over from earlier days, which only makes the controller more cautious).
A 24 h window is one simulated day. A 30-day window pools 30 days: with D
simulated days per cell, 30-day windows are drawn by resampling the days
(bootstrap, 2000 windows), and the share over the cap is reported.

    python -m simulations.sweep --agents 5,10,20,50,100 --answer-rates 0.2,0.3 \\
        --pacers progressive,classic,vicidial,predictive,oracle --days 2 --out results/sweep
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import time
import tomllib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
SCENARIOS = ROOT / "scenarios"
REFERENCE = SCENARIOS / "reference.toml"
SAMPLE_S = 60.0  # seconds of simulated time between samples of the over-the-day series
CAP = 0.03


@dataclass(frozen=True)
class Cell:
    scenario: str  # path of the scenario TOML
    pacer: str
    seed: int = 1
    agents: int | None = None
    answer_rate: float | None = None
    hours: float | None = None
    windows: str = "30d"  # the abandon controller's regulatory window: "30d" or "24h"
    overrides: tuple[tuple[str, Any], ...] = ()  # dotted.key -> value

    @property
    def label(self) -> str:
        name = Path(self.scenario).stem
        bits = [name]
        if self.agents is not None:
            bits.append(f"{self.agents}a")
        if self.answer_rate is not None:
            bits.append(f"p{self.answer_rate:g}")
        if self.windows != "30d":
            bits.append(self.windows)
        return "/".join(bits)


@dataclass
class Result:
    cell: Cell
    kpi: dict[str, Any]
    series: list[dict[str, float]] = field(default_factory=list)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for key in path:
        data = data.setdefault(key, {})
    data[last] = value


def build_config(cell: Cell) -> Any:
    """The campaign config of a cell: the scenario file with the cell's overrides applied."""
    from engine.config import campaign_from_dict

    data = copy.deepcopy(tomllib.loads(Path(cell.scenario).read_text(encoding="utf-8")))
    sim = data.setdefault("simulation", {})
    if cell.agents is not None:
        sim["agents"] = cell.agents
    if cell.answer_rate is not None:
        sim.setdefault("customers", {})["answer_rate"] = cell.answer_rate
    if cell.hours is not None:
        sim["duration"] = cell.hours * 3600.0
    sim["seed"] = cell.seed
    _set(data, "abandon.windows", [86400.0] if cell.windows == "24h" else [30 * 86400.0])
    for key, value in cell.overrides:
        _set(data, key, value)
    cfg = campaign_from_dict(data, source=cell.scenario)
    # Enough leads for the shift whatever the pacer: two attempts a day each at most.
    s = cfg.simulation
    p = max(s.customers.answer_rate, 0.05)
    need = int(s.agents * s.duration / 120.0 / p * 0.6) + 500
    if s.leads < need:
        cfg = cfg.model_copy(update={"simulation": s.model_copy(update={"leads": need})})
    return cfg


def run_cell(cell: Cell) -> Result:
    """One simulated shift with the real engine in virtual time (runs in a worker process)."""
    import asyncio

    from engine import logs
    from simulations import baselines
    from simulations.runner import simulate

    logs.configure("error", json=True)
    baselines.register()
    cfg = build_config(cell)
    series: list[dict[str, float]] = []

    def on_dialer(dialer: Any) -> None:
        baselines.attach(dialer)
        loop = asyncio.get_running_loop()
        start = loop.time()

        def sample() -> None:
            c = dialer.counters
            snap = dialer.snapshot()
            est = snap.estimates
            about = snap.ready + len(snap.wrap_up)
            if snap.on_call:
                horizon = np.array([snap.ring_timeout])
                tq, _ = est.free_within(np.asarray(snap.on_call, dtype=float), np.zeros(0), horizon)
                about += float(tq.sum())
            series.append({"t": round(loop.time() - start, 1), "live": c.live, "abandoned": c.abandoned,
                           "dials": c.dials, "in_flight": len(snap.ringing), "agents_free_soon": round(about, 2),
                           "dial_ratio": round(len(snap.ringing) / max(about, 1.0), 3),
                           "allowance": round(dialer.controller.allowance, 5)})
            loop.call_later(SAMPLE_S, sample)

        loop.call_later(SAMPLE_S, sample)

    kpi = simulate(cfg, mode=cell.pacer, seed=cell.seed, on_dialer=on_dialer)
    keep = ("occupancy", "talk_min_per_agent_hour", "abandon_rate", "dials", "live", "abandoned", "connected",
            "talk_s", "wrap_s", "logged_in_h", "contact_rate", "wall_s", "seed", "errors", "machines")
    out = {k: kpi.get(k) for k in keep}
    out.update(agents=cfg.simulation.agents, answer_rate=cfg.simulation.customers.answer_rate,
               hours=cfg.simulation.duration / 3600.0)
    return Result(cell, out, series)


def run_consecutive(cell: Cell, days: int) -> list[dict[str, Any]]:
    """``days`` consecutive shifts of one campaign, one a day, each seeing the abandon counts of the
    days before it in its regulatory window (as a campaign running for weeks does: the 30-day
    window of day 31 holds days 2..31). Each day is a new engine process (new estimates and
    controller) over a fresh lead list; only the window's abandon history carries over. Returns
    the per-day KPIs, each with the seed and day number."""
    from datetime import timedelta

    from engine import logs
    from engine.store.memory import MemoryStore
    from simulations import baselines
    from simulations.runner import simulate

    logs.configure("error", json=True)
    baselines.register()
    cfg0 = build_config(cell)
    history: dict[int, list[int]] = {}  # abandon buckets (minute -> [abandoned, live]) of the days so far
    out = []
    for day in range(days):
        sim = cfg0.simulation
        cfg = cfg0.model_copy(update={"simulation": sim.model_copy(
            update={"start": sim.start + timedelta(days=day), "seed": cell.seed * 1000 + day})})
        store = MemoryStore()
        # The store keeps its window counts in minute buckets; the harness hands it the earlier days'.
        store._abandon_buckets[cfg.id] = {k: list(v) for k, v in history.items()}
        kpi = simulate(cfg, mode=cell.pacer, seed=cell.seed * 1000 + day, store=store,
                       on_dialer=baselines.attach)
        history = {k: list(v) for k, v in store._abandon_buckets[cfg.id].items()}
        out.append({"day": day, "seed": cell.seed * 1000 + day, "agents": sim.agents,
                    **{k: kpi.get(k) for k in ("occupancy", "abandon_rate", "live", "abandoned", "dials",
                                               "talk_min_per_agent_hour", "wall_s")}})
    return out


def rolling_windows(days: Sequence[dict[str, Any]], span: int = 30, cap: float = CAP) -> dict[str, float]:
    """The trailing ``span``-day window at the end of each consecutive simulated day (the campaign's
    first days included: their window is all the days so far), and the share of them over ``cap``."""
    if not days:
        return {"windows": 0, "over": float("nan"), "max_rate": float("nan"), "mean_rate": float("nan")}
    a = np.concatenate(([0.0], np.cumsum([d["abandoned"] for d in days])))
    live = np.concatenate(([0.0], np.cumsum([d["live"] for d in days])))
    end = np.arange(1, len(days) + 1)
    start = np.maximum(end - span, 0)
    rates = (a[end] - a[start]) / np.maximum(live[end] - live[start], 1.0)
    return {"windows": len(rates), "over": float(np.mean(rates > cap)), "max_rate": float(rates.max()),
            "mean_rate": float(rates.mean())}


def run_many(cells: Sequence[Cell], jobs: int | None = None, progress: bool = True) -> list[Result]:
    """Run cells in parallel processes (``jobs``, default: CPU count) with a progress bar."""
    jobs = jobs or os.cpu_count() or 1
    results: list[Result] = []
    if jobs == 1:
        iterator: Iterable[Result] = (run_cell(c) for c in cells)
        return list(_progress(iterator, len(cells), progress))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_cell, c) for c in cells]
        results = list(_progress((f.result() for f in as_completed(futures)), len(cells), progress))
    order = {c: i for i, c in enumerate(cells)}
    return sorted(results, key=lambda r: order[r.cell])


def _progress(it: Iterable[Result], total: int, show: bool) -> Iterable[Result]:
    if not show:
        yield from it
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]simulated shifts"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}")) as bar:
        task = bar.add_task("", total=total)
        for r in it:
            bar.update(task, advance=1, description=f"{r.cell.label} {r.cell.pacer} seed {r.cell.seed}")
            yield r


# -- windows ------------------------------------------------------------------------------


def windows_over(days: Sequence[tuple[int, int]], cap: float = CAP, span: int = 30, n: int = 2000,
                 seed: int = 0) -> float:
    """Share of ``span``-day windows whose pooled abandon rate is over ``cap``, windows drawn by
    resampling the simulated days (each an (abandoned, live) pair)."""
    if not days:
        return float("nan")
    a = np.array([d[0] for d in days], dtype=float)
    live = np.array([d[1] for d in days], dtype=float)
    if span == 1:
        return float(np.mean(a > cap * live))
    idx = np.random.default_rng(seed).integers(0, len(days), size=(n, span))
    return float(np.mean(a[idx].sum(1) > cap * live[idx].sum(1)))


# -- aggregation ----------------------------------------------------------------------------


def aggregate(results: Sequence[Result]) -> list[dict[str, Any]]:
    """One row per (scenario, team, answer rate, window mode, pacer): means over the simulated days."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        c = r.cell
        key = (Path(c.scenario).stem, r.kpi["agents"], r.kpi["answer_rate"], c.windows, c.overrides, c.pacer)
        groups.setdefault(key, []).append(r)
    rows = []
    for (scenario, agents, p, windows, overrides, pacer), rs in groups.items():
        k = [r.kpi for r in rs]
        live = sum(x["live"] for x in k)
        abandoned = sum(x["abandoned"] for x in k)
        days = [(x["abandoned"], x["live"]) for x in k]
        rows.append({
            "scenario": scenario, "agents": agents, "answer_rate": p, "window": windows,
            "overrides": ";".join(f"{a}={b}" for a, b in overrides), "pacer": pacer, "days": len(rs),
            "occupancy": round(float(np.mean([x["occupancy"] for x in k])), 4),
            # Spread of the per-day occupancy (sample standard deviation; 0 with one day).
            "occupancy_sd": round(float(np.std([x["occupancy"] for x in k], ddof=1)) if len(k) > 1 else 0.0, 4),
            "talk_min_per_agent_hour": round(float(np.mean([x["talk_min_per_agent_hour"] for x in k])), 2),
            "abandon_rate": round(abandoned / live, 4) if live else 0.0,
            "days_over_cap": round(windows_over(days, span=1), 3),
            "windows30_over_cap": round(windows_over(days, span=30), 3),
            "dials": int(np.mean([x["dials"] for x in k])),
            "wall_s": round(float(np.mean([x["wall_s"] for x in k])), 2),
        })
    by_case: dict[tuple, float] = {}  # the oracle ignores the abandon window: one per case serves both
    for row in rows:
        if row["pacer"] == "oracle":
            by_case[(row["scenario"], row["agents"], row["answer_rate"], row["overrides"])] = row["occupancy"]
    for row in rows:
        oracle = by_case.get((row["scenario"], row["agents"], row["answer_rate"], row["overrides"]))
        row["of_oracle"] = round(row["occupancy"] / oracle, 3) if oracle else None
    return rows


def write_results(results: Sequence[Result], rows: Sequence[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        with open(out / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    (out / "summary.json").write_text(json.dumps(list(rows), indent=1))
    runs = [{"cell": {**asdict(r.cell), "overrides": dict(r.cell.overrides)}, "kpi": r.kpi, "series": r.series}
            for r in results]
    (out / "runs.json").write_text(json.dumps(runs))
    with open(out / "runs.csv", "w", newline="") as f:
        fields = ["label", "pacer", "seed", *sorted({k for r in results for k in r.kpi})]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in results:
            w.writerow({"label": r.cell.label, "pacer": r.cell.pacer, "seed": r.cell.seed, **r.kpi})


def load_results(out: Path) -> list[Result]:
    """The runs a finished sweep wrote (``runs.json``), to aggregate or plot again."""
    runs = json.loads((out / "runs.json").read_text())
    return [Result(Cell(**{**r["cell"], "overrides": tuple(r["cell"]["overrides"].items())}), r["kpi"], r["series"])
            for r in runs]


# -- plots --------------------------------------------------------------------------------


def plot(results: Sequence[Result], rows: Sequence[dict[str, Any]], out: Path, cap: float = CAP) -> list[Path]:
    """occupancy_vs_abandon.png, abandon_over_day.png, dial_ratio.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    pacers = sorted({r["pacer"] for r in rows})
    colours = {p: plt.cm.tab10(i % 10) for i, p in enumerate(pacers)}

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for pacer in pacers:
        pts = [r for r in rows if r["pacer"] == pacer]
        ax.scatter([100 * r["abandon_rate"] for r in pts], [r["occupancy"] for r in pts], label=pacer,
                   color=colours[pacer], s=[12 + 0.6 * r["agents"] for r in pts], alpha=0.8)
    ax.axvline(100 * cap, color="red", ls="--", lw=1, label=f"cap {100 * cap:g} %")
    ax.set_xlabel("abandon rate, % of live answers")
    ax.set_ylabel("occupancy")
    ax.set_title("Occupancy vs abandon rate per pacer (marker size: team size)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(out / "occupancy_vs_abandon.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    def series_plot(name: str, ylabel: str, value: Any, title: str, hline: float | None,
                    ylim: tuple[float, float] | None, smooth: int = 1) -> None:
        cases = sorted({(Path(r.cell.scenario).stem, r.kpi["agents"], r.kpi["answer_rate"]) for r in results})
        cols = min(len(cases), 5)
        rows_n = math.ceil(len(cases) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False, sharey=True)
        for ax, case in zip(axes.flat, cases, strict=False):
            for pacer in pacers:
                for window in ("30d", "24h"):
                    runs = [r for r in results if (Path(r.cell.scenario).stem, r.kpi["agents"],
                                                   r.kpi["answer_rate"]) == case
                            and r.cell.pacer == pacer and r.cell.windows == window and r.series]
                    if not runs or (pacer == "progressive" and name == "dial_ratio"):
                        continue
                    r = runs[0]
                    ys = np.array([value(s) for s in r.series], dtype=float)
                    if smooth > 1 and len(ys) >= smooth:
                        ys = np.convolve(ys, np.ones(smooth) / smooth, mode="same")
                    ax.plot([s["t"] / 3600 for s in r.series], ys,
                            label=pacer if window == "30d" else f"{pacer} (24 h window)", color=colours[pacer],
                            lw=1.2, ls="-" if window == "30d" else ":")
            if hline is not None:
                ax.axhline(hline, color="red", ls="--", lw=1)
            if ylim is not None:
                ax.set_ylim(*ylim)
            ax.set_title(f"{case[0]}: {case[1]} agents, p={case[2]:g}", fontsize=9)
            ax.set_xlabel("hour of the shift")
            ax.grid(alpha=0.3)
        for ax in axes.flat[len(cases):]:
            ax.set_visible(False)
        for row in axes:
            row[0].set_ylabel(ylabel)
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)

    series_plot("abandon_over_day", "abandon rate so far today, %",
                lambda s: 100 * s["abandoned"] / s["live"] if s["live"] else 0.0,
                "Abandon rate over the day (first seed) against the cap", 100 * cap, (0.0, 8.0))
    series_plot("dial_ratio", "calls in flight / agents free or about to be", lambda s: s["dial_ratio"],
                "Dial ratio over time (first seed; 15-minute moving average of 1-minute samples)", None, None,
                smooth=15)
    return paths


def print_table(rows: Sequence[dict[str, Any]], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    cols = [("scenario", "scenario"), ("agents", "agents"), ("answer_rate", "p"), ("window", "window"),
            ("pacer", "pacer"), ("days", "days"), ("occupancy", "occupancy"), ("occupancy_sd", "sd"),
            ("of_oracle", "of oracle"),
            ("talk_min_per_agent_hour", "talk min/agent h"), ("abandon_rate", "abandon %"),
            ("windows30_over_cap", "30-day windows over cap"), ("days_over_cap", "days (24 h) over cap"),
            ("wall_s", "wall s/run")]
    for _, name in cols:
        table.add_column(name, justify="right")
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            if key == "abandon_rate":
                v = f"{100 * v:.2f}"
            elif key in ("windows30_over_cap", "days_over_cap"):
                v = f"{100 * v:.0f} %"
            elif key == "of_oracle" and v is not None:
                v = f"{v:.3f}"
            cells.append("" if v is None else str(v))
        table.add_row(*cells)
    Console(width=200).print(table)


def consecutive_main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    cells = [Cell(str(sc), pacer, 1, int(a), float(args.answer_rates) if args.answer_rates else None, args.hours)
             for sc in args.scenarios.split(",") for a in (args.agents or "5").split(",")
             for pacer in args.pacers.split(",")]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs or os.cpu_count() or 1) as pool:
        futures = {pool.submit(run_consecutive, c, args.consecutive): c for c in cells}
        runs = {futures[f]: f.result() for f in as_completed(futures)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"{args.consecutive} consecutive days: the trailing 30-day window at each day's end")
    for name in ("scenario", "agents", "pacer", "occupancy", "abandon % (all days)", "days over cap",
                 "30-day windows", "over cap", "highest 30-day rate %"):
        table.add_column(name, justify="right")
    summary = []
    for c in cells:
        days = runs[c]
        w = rolling_windows(days)
        live = sum(d["live"] for d in days)
        row = {"scenario": Path(c.scenario).stem, "agents": c.agents, "pacer": c.pacer, "days": len(days),
               "occupancy": round(float(np.mean([d["occupancy"] for d in days])), 4),
               "abandon_rate": round(sum(d["abandoned"] for d in days) / max(live, 1), 4),
               "days_over_cap": round(float(np.mean([d["abandoned"] > CAP * d["live"] for d in days])), 3),
               **{f"windows30_{k}": v for k, v in w.items()}}
        summary.append(row)
        table.add_row(row["scenario"], str(c.agents), c.pacer, f"{row['occupancy']:.4f}",
                      f"{100 * row['abandon_rate']:.2f}", f"{100 * row['days_over_cap']:.0f} %", str(w["windows"]),
                      f"{100 * w['over']:.0f} %", f"{100 * w['max_rate']:.2f}")
    Console(width=160).print(table)
    (out / "consecutive.json").write_text(json.dumps({"summary": summary,
                                                      "days": {f"{c.agents}/{c.pacer}": runs[c] for c in cells}}))
    print(f"{len(cells)} runs of {args.consecutive} days in {time.perf_counter() - started:.0f} s; results in {out}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=str(REFERENCE), help="comma-separated scenario TOML files")
    ap.add_argument("--agents", default="", help="team sizes, e.g. 5,10,20 (default: each scenario's)")
    ap.add_argument("--answer-rates", default="", help="e.g. 0.2,0.3 (default: each scenario's)")
    ap.add_argument("--pacers", default="progressive,classic,vicidial,predictive,oracle")
    ap.add_argument("--windows", default="30d", help="30d, 24h or both: 30d,24h")
    ap.add_argument("--days", type=int, default=2, help="simulated days (seeds) per cell")
    ap.add_argument("--hours", type=float, default=None, help="shift length (default: the scenario's)")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--out", default="results/sweep")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--again", action="store_true", help="aggregate and plot the runs already in --out")
    ap.add_argument("--consecutive", type=int, default=0, metavar="DAYS",
                    help="instead: DAYS consecutive days per team and pacer, each seeing the earlier days in "
                         "its 30-day window; prints the rolling 30-day windows over the cap")
    args = ap.parse_args(argv)
    if args.consecutive:
        return consecutive_main(args)
    if args.again:
        out = Path(args.out)
        results = load_results(out)
        rows = aggregate(results)
        write_results(results, rows, out)
        print_table(rows)
        if not args.no_plots:
            plot(results, rows, out)
        return 0
    cells = [
        Cell(str(s), pacer, seed, agents, p, args.hours, w)
        for s in args.scenarios.split(",")
        for agents in ([int(a) for a in args.agents.split(",")] if args.agents else [None])
        for p in ([float(x) for x in args.answer_rates.split(",")] if args.answer_rates else [None])
        for w in args.windows.split(",")
        for pacer in args.pacers.split(",")
        for seed in range(1, args.days + 1)
    ]
    # Biggest first, so the pool does not end on one long run.
    cells.sort(key=lambda c: -(c.agents or 0))
    started = time.perf_counter()
    results = run_many(cells, args.jobs)
    rows = aggregate(results)
    rows.sort(key=lambda r: (r["scenario"], r["agents"], r["answer_rate"], r["window"], r["pacer"]))
    out = Path(args.out)
    write_results(results, rows, out)
    print_table(rows)
    if not args.no_plots:
        for p in plot(results, rows, out):
            print("plot:", p)
    print(f"{len(cells)} shifts in {time.perf_counter() - started:.1f} s wall; results in {out}/")
    return 0 if all(math.isfinite(r["occupancy"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
