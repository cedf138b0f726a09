"""The speed benchmark's own plumbing (not its figures: no test asserts on time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_repeated_shifts_each_in_its_own_process_report_the_best_one(tmp_path: Path) -> None:
    out = tmp_path / "speed"
    done = subprocess.run([sys.executable, "-m", "simulations.bench_speed", "--agents", "10", "--hours", "0.05",
                           "--repeat", "2", "--out", str(out)], capture_output=True, text=True, timeout=300,
                          check=True)
    assert "run 1 of 2 (its own process)" in done.stdout and "run 2 of 2" in done.stdout
    assert "best of 2:" in done.stdout and "libpython" in done.stdout.splitlines()[0]
    figures = json.loads((out / "speed.json").read_text())
    assert len(figures["runs_wall_s"]) == 2
    assert figures["wall_s"] == min(figures["runs_wall_s"])
    assert min(figures["runs_wall_s"]) <= figures["median_wall_s"] <= max(figures["runs_wall_s"])
    assert figures["dials"] > 0 and figures["baseline_tasks"] == figures["dials"]
    assert "libpython" in figures["python"]
