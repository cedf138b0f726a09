"""``dialer run`` with ``backend = "asterisk"`` against ``dialer pbx-emulator``: two processes talking AMI
over real TCP, the way an operator runs a campaign against a real Asterisk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIALER = [sys.executable, "-m", "engine.cli"]
SECRET_ENV = "DIALER_E2E_AMI_SECRET"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), SECRET_ENV: "e2e-secret"}

pytestmark = pytest.mark.slow


@pytest.fixture
def emulator() -> Iterator[int]:
    """``dialer pbx-emulator`` on a free port, ten times faster than real calls; yields its port."""
    proc = subprocess.Popen([*DIALER, "pbx-emulator", "--port", "0", "--secret-env", SECRET_ENV,
                             "--time-scale", "0.1"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line and proc.poll() is not None:
                break
            m = re.search(r"AMI emulator on [\d.]+:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port is not None, "the emulator did not say where it listens"
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def campaign(tmp_path: Path, port: int, *, secret_env: str = SECRET_ENV, mode: str = "predictive") -> Path:
    path = tmp_path / "ami.toml"
    path.write_text(f"""
[campaign]
id = "ami-e2e"
mode = "{mode}"
backend = "asterisk"
timezone = "America/New_York"

[hours]  # the test runs at any hour of the real day
start = "00:00"
end = "24:00"

[abandon]
count_early_hangups = false  # the emulator's customers, ten times faster, lose patience in 1 s

[asterisk]
servers = [{{ host = "127.0.0.1", port = {port}, secret_env = "{secret_env}" }}]

[results]
dir = "{tmp_path / 'results'}"

[simulation]
agents = 4
leads = 60
duration = "15s"

[simulation.agent]
wrap_mean = "0.5s"
""")
    return path


def run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DIALER, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_a_campaign_runs_against_the_emulator_over_ami(tmp_path, emulator):
    done = run("run", str(campaign(tmp_path, emulator)), "--realtime", "--json", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)["after_drain"]  # figures once the calls in flight have ended
    rows = [json.loads(line) for f in (tmp_path / "results").glob("*.jsonl") for line in f.read_text().splitlines()]
    outcomes = Counter(r["outcome"] for r in rows)
    # every dial is one result row; the emulator's numbers (by last digit) give every kind of outcome
    assert len(rows) == summary["dials"] > 10
    assert outcomes["connected"] == summary["connected"] > 0
    assert outcomes["busy"] > 0 and outcomes["congestion"] > 0
    assert summary["errors"] == 0 and summary["interrupted"] == 0
    assert all(r["agent_id"] for r in rows if r["outcome"] == "connected")
    assert len({r["call_id"] for r in rows}) == len(rows), "a call recorded twice"
    report = next((tmp_path / "results").glob("*-compliance.txt")).read_text()
    assert f"{summary['dials']:>8} {summary['live']:>8}" in report


def test_a_wrong_secret_stops_the_run_with_a_clear_message(tmp_path, emulator):
    cfg = campaign(tmp_path, emulator, secret_env="DIALER_E2E_WRONG")
    env_wrong = {**ENV, "DIALER_E2E_WRONG": "not-the-secret"}
    # a refused login that retried forever would hit the subprocess timeout
    done = subprocess.run([*DIALER, "run", str(cfg), "--realtime", "--json", "--quiet"], cwd=ROOT, env=env_wrong,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the PBX refused our login" in done.stderr and "Traceback" not in done.stderr


def test_a_campaign_on_a_real_pbx_refuses_virtual_time(tmp_path):
    done = run("run", str(campaign(tmp_path, 5038)), "--json", "--quiet")
    assert done.returncode == 2 and "add --realtime" in done.stderr
