"""Every pacer on the standard scenarios, side by side: ``python -m simulations.bench_pacing``.

The standard scenarios are the issue's reference model (``scenarios/reference.toml``: live answer
probability p, answer delay gamma mean 8 s, no-answer timeout 25 s, talk exponential 120 s, wrap-up
15 s fixed, connect limit 2 s, cap 3 %) at 5, 10, 20, 50 and 100 agents. Each cell is run for
``--days`` simulated days (seeds 1..days), by the real engine in virtual time, every pacer
online (no per-scenario tuning; the baselines adapt their one parameter online too). Printed per
scenario and pacer: occupancy, talk minutes per agent hour, abandon rate (abandoned / live), the
share of 30-day windows over the cap (days resampled, see ``simulations.sweep``), the share of
days over the cap, and occupancy as a fraction of the oracle's. Then the predictive pacer in 24 h
mode (controller on a 24 h window) for the share of days over the cap, and the wall time of one
100-agent 8-hour shift on one core.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from simulations.bench_speed import bare_tasks, time_shift
from simulations.sweep import REFERENCE, Cell, aggregate, plot, print_table, run_many, write_results

PACERS = ("progressive", "fixed", "vicidial", "classic", "predictive", "oracle")
TEAMS = (5, 10, 20, 50, 100)
TARGETS = {5: 0.81, 10: 0.87, 20: 0.91, 50: 0.955, 100: 0.974}  # the issue's, at p = 0.3 and a 3 % cap


def closed_form_progressive(p: float, talk: float = 120.0, wrap: float = 15.0, ring: float = 8.0,
                            timeout: float = 25.0) -> float:
    """Each success costs (1/p - 1) no-answers held to the timeout plus its own answer delay of idle time."""
    return (talk + wrap) / (talk + wrap + (1 / p - 1) * timeout + ring)


def _table(rows: list[dict], with_scenario: bool = False) -> list[str]:
    head = "| scenario " if with_scenario else ""
    lines = [f"{head}| agents | p | window | pacer | days | occupancy | sd | of oracle | talk min / agent h "
             "| abandon % | 30-day windows over cap | days over cap |",
             "|---" * (12 + with_scenario) + "|"]
    for r in rows:
        oracle = "" if r.get("of_oracle") is None else f"{r['of_oracle']:.3f}"
        first = f"| {r['scenario']} " if with_scenario else ""
        lines.append(f"{first}| {r['agents']} | {r['answer_rate']:g} | {r['window']} | {r['pacer']} | {r['days']} "
                     f"| {r['occupancy']:.3f} | {r.get('occupancy_sd', 0.0):.3f} | {oracle} "
                     f"| {r['talk_min_per_agent_hour']:.1f} "
                     f"| {100 * r['abandon_rate']:.2f} | {100 * r['windows30_over_cap']:.0f} % "
                     f"| {100 * r['days_over_cap']:.0f} % |")
    return lines


def markdown(out: Path, consecutive: Path | None = None, sweep: Path | None = None) -> str:
    """The results of finished runs (summary.json, speed.json, consecutive.json) as Markdown tables."""
    lines = _table(json.loads((out / "summary.json").read_text()))
    speed = out / "speed.json"
    if speed.exists():
        sp = json.loads(speed.read_text())
        ratio = f", {sp['ratio']} x a bare asyncio task per dial" if "ratio" in sp else ""
        lines += ["", f"Wall time of one {sp['agents']}-agent {sp['hours']:g} h shift (predictive, one core): "
                      f"{sp['wall_s']} s ({sp['dials']} dials{ratio})."]
    if consecutive is not None and (consecutive / "consecutive.json").exists():
        data = json.loads((consecutive / "consecutive.json").read_text())
        lines += ["", "| agents | pacer | days | occupancy | abandon % | days over cap | 30-day windows "
                      "| over cap | highest 30-day rate % |", "|---|---|---|---|---|---|---|---|---|"]
        for r in data["summary"]:
            lines.append(f"| {r['agents']} | {r['pacer']} | {r['days']} | {r['occupancy']:.3f} "
                         f"| {100 * r['abandon_rate']:.2f} | {100 * r['days_over_cap']:.0f} % "
                         f"| {r['windows30_windows']} | {100 * r['windows30_over']:.0f} % "
                         f"| {100 * r['windows30_max_rate']:.2f} |")
    if sweep is not None and (sweep / "summary.json").exists():
        lines += ["", *_table(json.loads((sweep / "summary.json").read_text()), with_scenario=True)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", default=",".join(map(str, TEAMS)))
    ap.add_argument("--answer-rate", type=float, default=0.3)
    ap.add_argument("--pacers", default=",".join(PACERS))
    ap.add_argument("--days", type=int, default=2, help="simulated days per cell (30-day mode)")
    ap.add_argument("--days24", type=int, default=4, help="simulated days per team, predictive in 24 h mode")
    ap.add_argument("--days-small", type=int, default=8,
                    help="simulated days for the predictive pacer at 20 agents or fewer (both modes), whose "
                         "daily figures scatter most")
    ap.add_argument("--hours", type=float, default=8.0)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--out", default="results/bench_pacing")
    ap.add_argument("--markdown", action="store_true", help="print the results already in --out as Markdown")
    ap.add_argument("--consecutive-out", default="results/consecutive", help="with --markdown")
    ap.add_argument("--sweep-out", default="results/sweep", help="with --markdown")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(Path(args.out), Path(args.consecutive_out), Path(args.sweep_out)))
        return 0
    teams = [int(a) for a in args.agents.split(",")]
    p = args.answer_rate
    scenario = str(REFERENCE)
    def days(n: int, pacer: str, default: int) -> int:
        return max(default, args.days_small) if pacer == "predictive" and n <= 20 else default

    cells = [Cell(scenario, pacer, seed, n, p, args.hours) for n in teams for pacer in args.pacers.split(",")
             for seed in range(1, days(n, pacer, args.days) + 1)]
    cells += [Cell(scenario, "predictive", seed, n, p, args.hours, "24h") for n in teams
              for seed in range(1, days(n, "predictive", args.days24) + 1)]
    cells.sort(key=lambda c: -(c.agents or 0))
    started = time.perf_counter()
    results = run_many(cells, args.jobs)
    rows = aggregate(results)
    rows.sort(key=lambda r: (r["window"], r["agents"], list(PACERS).index(r["pacer"]) if r["pacer"] in PACERS
                             else 99))
    out = Path(args.out)
    write_results(results, rows, out)
    print_table(rows, f"Pacers on the reference model, p = {p:g}, cap 3 %, {args.hours:g} h shifts")
    print(f"progressive closed form at p = {p:g}: {closed_form_progressive(p):.3f}")
    print("targets (predictive, 30-day mode): " + ", ".join(f"{n} agents >= {t}" for n, t in TARGETS.items()))
    for path in plot(results, rows, out):
        print("plot:", path)
    print(f"{len(cells)} simulated shifts in {time.perf_counter() - started:.0f} s wall "
          f"({args.jobs or 'all'} processes); results in {out}/")
    # The simulator's speed: one 100-agent 8-hour shift, one process, one core (see simulations.bench_speed).
    sp = time_shift(100, 8.0, "predictive", 1, p)
    base = bare_tasks(sp["dials"])
    print(f"wall time, 100 agents x 8 h, predictive, one core: {sp['wall_s']:.1f} s (engine run "
          f"{sp['engine_wall_s']:.1f} s, {sp['dials']} dials); baseline {base:.2f} s for as many bare asyncio "
          f"tasks: {sp['wall_s'] / base:.1f} x")
    (out / "speed.json").write_text(json.dumps({**sp, "baseline_wall_s": round(base, 3),
                                                "ratio": round(sp["wall_s"] / base, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
