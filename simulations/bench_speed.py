"""How fast the simulator runs a shift: ``python -m simulations.bench_speed``.

Times one shift of the issue's reference model (100 agents, 8 hours, predictive pacer, p = 0.3;
``simulations/scenarios/reference.toml``) run by the real engine in virtual time, in this one
process (one core), and prints its wall time, its CPU time and the dials it made. Next to it, a
baseline measured in the same run on the same machine: asyncio's own event loop running one bare
task per dial (started in a task group, yielding three times: the skeleton of a call with none of
its work), so ``shift / baseline`` says how many bare task lifetimes one dial of the engine costs,
a figure that carries over between machines better than seconds do. The engine is imported before
the clock starts (a one-off of the process, printed apart: about 0.3 s). ``--profile HOURS`` adds
where the time of a shift that long goes (cProfile, own time grouped by file; profiling slows the
run about twofold). ``--repeat N`` times the shift N times, each in a fresh process of its own, one
after the other, and reports the best and the median: on a shared machine whose speed drifts by a
fifth from one minute to the next, one run says little. The interpreter's build is printed too (a
statically linked, optimised build runs the same code some 10 % faster than a shared-libpython one).

No assertion on time anywhere: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from simulations.sweep import REFERENCE, Cell, run_cell


def bare_tasks(n: int, batch: int = 1000, repeat: int = 3) -> float:
    """Seconds to run ``n`` bare tasks on asyncio's own event loop (not the simulator's, so that the
    baseline does not move with the simulator's code): each task is started in a task group and
    yields to the loop three times, the skeleton of a call with none of its work. The best of
    ``repeat`` runs (the baseline is short, so a busy machine skews one run more than the shift)."""

    async def one() -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def main() -> None:
        for start in range(0, n, batch):
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(batch, n - start)):
                    tg.create_task(one())

    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        asyncio.run(main())
        best = min(best, time.perf_counter() - started)
    return best


def interpreter() -> str:
    """Which build of Python runs the benchmark: the same code runs some 10 % slower on an interpreter
    linked to a shared libpython (a plain source build, pyenv's default) than on a distribution's
    statically linked, optimised one (BENCHMARKS.md, Speed), so the figures say which it was."""
    try:  # what this process has mapped, not what sysconfig says (Debian builds both, and runs the static one)
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return os.path.realpath(sys.executable)
    return f"{os.path.realpath(sys.executable)}, {'shared' if 'libpython' in maps else 'static'} libpython"


def import_engine() -> float:
    """Import what a shift imports on first use (the engine, its plugins, the simulator) and load the
    compiled pacing decision, so that the shift's time is the shift's; returns the seconds it took
    (printed apart: a one-off of the process)."""
    started = time.perf_counter()
    import engine.dialer
    import engine.logs
    import engine.pacing.kernel
    import engine.plugins
    import simulations.baselines
    import simulations.runner  # noqa: F401

    engine.pacing.kernel.warm_up()  # the compiled decision loaded (or compiled, once per machine)
    engine.plugins.make_plugin_manager()  # the installed plugins imported (the compliance rules: phonenumbers)
    return time.perf_counter() - started


def time_shift(agents: int = 100, hours: float = 8.0, pacer: str = "predictive", seed: int = 1,
               answer_rate: float = 0.3) -> dict[str, Any]:
    """One shift of the reference model in this process: wall and CPU seconds, dials, KPIs (the engine
    imported beforehand, see ``import_engine``)."""
    import_engine()
    wall, cpu = time.perf_counter(), time.process_time()
    r = run_cell(Cell(str(REFERENCE), pacer, seed, agents, answer_rate, hours))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    k = r.kpi
    return {"agents": agents, "hours": hours, "pacer": pacer, "seed": seed, "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "engine_wall_s": k["wall_s"], "dials": k["dials"],
            "occupancy": k["occupancy"], "abandon_rate": k["abandon_rate"], "live": k["live"],
            "abandoned": k["abandoned"], "errors": k["errors"]}


def profile_shift(agents: int, hours: float, pacer: str, seed: int, top: int = 25) -> list[tuple[str, float]]:
    """Own time by file (cProfile) of one shift, largest first, as (file, share of the total)."""
    prof = cProfile.Profile()
    prof.enable()
    run_cell(Cell(str(REFERENCE), pacer, seed, agents, 0.3, hours))
    prof.disable()
    by_file: Counter[str] = Counter()
    for (path, _, func), (_, _, own, _, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        if "site-packages/" in path:
            key = path.split("site-packages/")[1].split("/")[0]
        elif "/lib/python3" in path:
            key = "stdlib " + path.split("/lib/python3")[1].split("/", 1)[1]
        elif path == "~":
            key = f"builtin {func}"
        else:
            key = os.path.relpath(path)
        by_file[key] += own
    total = sum(by_file.values()) or 1.0
    return [(name, own / total) for name, own in by_file.most_common(top)]


def shift_in_fresh_process(args: argparse.Namespace) -> dict[str, Any]:
    """One shift timed in a new interpreter (``--shift-only``): nothing warmed by an earlier run of this
    process (the plugins' caches of zones and numbers) makes a repetition faster than the first."""
    cmd = [sys.executable, "-m", "simulations.bench_speed", "--shift-only", "--agents", str(args.agents),
           "--hours", str(args.hours), "--pacer", args.pacer, "--seed", str(args.seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--hours", type=float, default=8.0)
    ap.add_argument("--pacer", default="predictive")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline-tasks", type=int, default=0,
                    help="bare tasks in the baseline (default: as many as the shift made dials)")
    ap.add_argument("--profile", type=float, default=0.0, metavar="HOURS",
                    help="also profile a shift of this many hours (e.g. 1) and print own time by file")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the shift this many times, each in a fresh process of its own, one after the other, "
                         "and report the best and the median (on a shared machine the speed drifts from minute "
                         "to minute; the best run is the nearest to the code's own cost)")
    ap.add_argument("--shift-only", action="store_true", help=argparse.SUPPRESS)  # one repetition's process
    ap.add_argument("--out", default="results/bench_speed")
    args = ap.parse_args(argv)

    if args.shift_only:
        import_engine()
        print(json.dumps(time_shift(args.agents, args.hours, args.pacer, args.seed)))
        return 0
    where = "one process" if args.repeat <= 1 else f"{args.repeat} processes, one after the other"
    print(f"speed benchmark: Python {platform.python_version()} ({interpreter()}), {os.cpu_count()} CPUs, "
          f"{where}, load average {os.getloadavg()[0]:.2f} at start")
    imports = import_engine()
    runs: list[dict[str, Any]] = []
    if args.repeat > 1:
        for i in range(args.repeat):
            runs.append(shift_in_fresh_process(args))
            print(f"  run {i + 1} of {args.repeat} (its own process): {runs[-1]['wall_s']:.2f} s wall, "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
        walls = sorted(r["wall_s"] for r in runs)
        shift = {**min(runs, key=lambda r: r["wall_s"]), "runs_wall_s": [r["wall_s"] for r in runs],
                 "median_wall_s": round(statistics.median(walls), 2)}
        print(f"best of {args.repeat}: {walls[0]:.2f} s; median {shift['median_wall_s']:.2f} s; "
              f"worst {walls[-1]:.2f} s")
    else:
        shift = time_shift(args.agents, args.hours, args.pacer, args.seed)
    n = args.baseline_tasks or shift["dials"]
    base = bare_tasks(n)
    ratio = shift["wall_s"] / base if base else float("nan")
    out = {**shift, "python": f"{platform.python_version()} ({interpreter()})", "import_s": round(imports, 2),
           "load_average": round(os.getloadavg()[0], 2), "baseline_tasks": n, "baseline_wall_s": round(base, 3),
           "ratio": round(ratio, 1),
           "dials_per_s": round(shift["dials"] / shift["wall_s"]), "us_per_dial": round(1e6 * shift["wall_s"]
                                                                                       / max(shift["dials"], 1))}
    print(f"shift: {args.agents} agents x {args.hours:g} h, {args.pacer}: {shift['wall_s']:.2f} s wall, "
          f"{shift['cpu_s']:.2f} s CPU, {shift['dials']} dials ({out['dials_per_s']:,} dials/s, "
          f"{out['us_per_dial']} us per dial), occupancy {shift['occupancy']}, abandon rate "
          f"{100 * shift['abandon_rate']:.2f} %; the engine's imports and compiled kernel before it: "
          f"{imports:.2f} s")
    print(f"baseline: {n} bare asyncio tasks (three yields each) on asyncio's own loop: {base:.2f} s wall")
    print(f"shift / baseline: {ratio:.1f}; load average {os.getloadavg()[0]:.2f} at the end")
    if args.profile:
        print(f"\nwhere a {args.profile:g} h shift spends its time (cProfile, own time by file):")
        for name, share in profile_shift(args.agents, args.profile, args.pacer, args.seed):
            print(f"  {100 * share:5.1f} %  {name}")
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "speed.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
