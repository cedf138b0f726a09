"""``dialer run`` with ``backend = "asterisk"`` against ``dialer pbx-emulator``: two processes talking AMI
over real TCP, the way an operator runs a campaign against a real Asterisk."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIALER = [sys.executable, "-m", "engine.cli"]
SECRET_ENV = "DIALER_E2E_AMI_SECRET"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), SECRET_ENV: "e2e-secret"}

pytestmark = pytest.mark.slow


def start_emulator(*extra: str) -> tuple[subprocess.Popen[str], int]:
    """``dialer pbx-emulator`` on a free port, ten times faster than real calls; returns it and its port."""
    proc = subprocess.Popen([*DIALER, "pbx-emulator", "--port", "0", "--secret-env", SECRET_ENV,
                             "--time-scale", "0.1", *extra], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 20
    port = None
    while port is None and time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line and proc.poll() is not None:
            break
        m = re.search(r"AMI emulator on [\d.]+:(\d+)", line)
        port = int(m.group(1)) if m else None
    if port is None:
        stop_emulator(proc)
        pytest.fail("the emulator did not say where it listens")
    return proc, port


def stop_emulator(proc: subprocess.Popen[str]) -> int:
    """SIGTERM, as an operator's service manager would send; the emulator stops cleanly (and writes its
    --record) rather than dying."""
    proc.terminate()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise


@pytest.fixture
def emulator() -> Iterator[int]:
    """The emulator with its default plan; yields its port."""
    proc, port = start_emulator()
    try:
        yield port
    finally:
        stop_emulator(proc)


def campaign(tmp_path: Path, port: int, *, secret_env: str = SECRET_ENV, mode: str = "predictive",
             transport: str = "native") -> Path:
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
ami_transport = "{transport}"

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


@pytest.mark.parametrize("transport", ["native", "panoramisk"])
def test_a_campaign_runs_against_the_emulator_over_ami(tmp_path, emulator, transport):
    done = run("run", str(campaign(tmp_path, emulator, transport=transport)), "--realtime", "--json", "--quiet")
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


@pytest.mark.parametrize("transport", ["native", "panoramisk"])
def test_a_wrong_secret_stops_the_run_with_a_clear_message(tmp_path, emulator, transport):
    cfg = campaign(tmp_path, emulator, secret_env="DIALER_E2E_WRONG", transport=transport)
    env_wrong = {**ENV, "DIALER_E2E_WRONG": "not-the-secret"}
    # a refused login that retried forever would hit the subprocess timeout
    done = subprocess.run([*DIALER, "run", str(cfg), "--realtime", "--json", "--quiet"], cwd=ROOT, env=env_wrong,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the PBX refused our login" in done.stderr and "Traceback" not in done.stderr


def test_a_secret_changed_on_the_pbx_mid_run_stops_the_run_with_exit_1(tmp_path):
    """The run has dialled; then the PBX's secret changes and the link drops. The reconnect is refused:
    the run stops and says why (exit 1), its calls in flight are recorded as unknown, the compliance
    report is written, and the leads not yet dialled are left alone instead of failed one by one."""
    proc, port = start_emulator("--new-secret-after", "3")
    try:
        path = campaign(tmp_path, port)
        path.write_text(path.read_text().replace('duration = "15s"', 'duration = "120s"')
                        .replace("leads = 60", "leads = 400"))
        done = run("run", str(path), "--realtime", "--json", "--quiet")
    finally:
        stop_emulator(proc)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "the run stopped itself: AMI login refused" in done.stderr and "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert "login refused" in summary["failed"]
    rows = [json.loads(line) for f in (tmp_path / "results").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert 0 < len(rows) < 400
    assert "failed" not in Counter(r["outcome"] for r in rows)  # no lead spent on a dial that could not be placed
    assert next((tmp_path / "results").glob("*-compliance.txt")).read_text()


def test_an_unknown_ami_transport_is_refused_before_anything_connects(tmp_path):
    done = run("run", str(campaign(tmp_path, 5038, transport="starpy")), "--realtime", "--json", "--quiet")
    assert done.returncode == 2 and "asterisk.ami_transport" in done.stderr and "panoramisk" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_campaign_on_a_real_pbx_refuses_virtual_time(tmp_path):
    done = run("run", str(campaign(tmp_path, 5038)), "--json", "--quiet")
    assert done.returncode == 2 and "add --realtime" in done.stderr


# -- a few hundred leads, every outcome checked against what the PBX did ----------------------------

LEADS = 240
# The emulator's default plan decides by the number's last digit (asterisk/README.md): with AMD on,
# a machine (4) is recognised and dropped; 0-3 and 5 are people, who end connected to an agent or
# abandoned with the message, whichever the agents' availability made of them.
BY_DIGIT = {"4": "machine", "6": "no_answer", "7": "no_answer", "8": "busy", "9": "congestion"}


def mixed_campaign(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "mixed.toml"
    path.write_text(f"""
[campaign]
id = "ami-mixed"
# The fixed-ratio pacer keeps 1.5 calls in flight per agent ready or in wrap-up and ignores the abandon
# controller: with a 2.5 s wrap-up, answers regularly find every agent busy, so abandons are certain.
mode = "fixed"
backend = "asterisk"
timezone = "America/New_York"

[hours]
start = "00:00"
end = "24:00"

# [abandon] count_early_hangups stays on (the default): a person hanging up before an agent was free
# would count as abandoned without having heard the message, which the test below would catch. The
# emulator's people are given 40 s (4 s at this time scale) of patience, more than AMD + the 2 s
# connect limit, so every abandon is the engine's decision and must reach the message.

[amd]
enabled = true

[retry]
max_attempts = 1  # one attempt per lead: the run ends when every lead is done

[asterisk]
servers = [{{ host = "127.0.0.1", port = {port}, secret_env = "{SECRET_ENV}" }}]

[results]
dir = "{tmp_path / 'results'}"

[simulation]
agents = 12
leads = 0
duration = "150s"  # a bound only: the run stops when the leads are exhausted

[simulation.agent]
wrap_mean = "2.5s"

[simulation.customers]  # agents close every connected call as not_interested (final)
sale_rate = 0.0
refusal_rate = 0.0
callback_rate = 0.0
""")
    return path


def write_leads(tmp_path: Path) -> dict[str, str]:
    """LEADS leads whose last digits cycle 0-9; returns lead id -> phone."""
    phones = {f"L{i:03d}": f"+1212555{1000 + i:04d}" for i in range(LEADS)}
    with (tmp_path / "leads.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lead_id", "phone"])
        w.writerows(phones.items())
    return phones


def test_a_few_hundred_leads_end_with_the_outcome_their_number_asks_for(tmp_path):
    """The whole stack over TCP, two processes: every lead is dialled once and ends as its number says;
    every abandoned call heard the message (seen from the PBX's side); a person who pressed 9 in it is
    recorded as a DNC request."""
    phones = write_leads(tmp_path)
    record = tmp_path / "pbx.json"
    proc, port = start_emulator("--patience", "40", "--opt-out-digits", "05", "--record", str(record))
    try:
        done = run("run", str(mixed_campaign(tmp_path, port)), "--leads", str(tmp_path / "leads.csv"),
                   "--realtime", "--json", "--quiet", timeout=240)
    finally:
        assert stop_emulator(proc) == 0
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)["after_drain"]
    pbx: dict[str, Any] = json.loads(record.read_text())
    rows = [json.loads(line) for f in (tmp_path / "results").glob("*.jsonl") for line in f.read_text().splitlines()]

    # Every lead done, once: one result per (lead, attempt), and the PBX received one Originate per
    # call and per lead (never re-sent, never dialled twice).
    assert Counter(r["lead_id"] for r in rows) == Counter(list(phones))
    assert all(n == 1 for n in Counter((r["lead_id"], r["attempt_no"]) for r in rows).values())
    assert set(pbx["originates"]) == {r["call_id"] for r in rows} and set(pbx["originates"].values()) == {1}
    assert pbx["leads"] == dict.fromkeys(phones, 1)
    assert summary["dials"] == LEADS and summary["errors"] == 0 and summary["interrupted"] == 0

    by_outcome: dict[str, set[str]] = {}
    for r in rows:
        digit = phones[r["lead_id"]][-1]
        want = BY_DIGIT.get(digit, "connected or abandoned")
        assert r["outcome"] in want.split(" or "), (r["lead_id"], digit, r["outcome"])
        by_outcome.setdefault(r["outcome"], set()).add(r["call_id"])
    connected, abandoned = by_outcome.get("connected", set()), by_outcome.get("abandoned", set())
    assert connected and abandoned, "the fixed pacer at this wrap-up always abandons some calls"
    assert len(abandoned) == summary["abandoned"] and len(connected) == summary["connected"]

    # Connected: bridged on the PBX to the very agent the result names. Abandoned: the PBX played the
    # message to exactly these calls, once each, and to no other.
    assert {r["call_id"]: r["agent_id"] for r in rows if r["outcome"] == "connected"} == pbx["bridged"]
    assert pbx["abandon_messages"] == dict.fromkeys(abandoned, 1)

    # Opt-out: the people whose number ends in 0 or 5 pressed 9 if they were abandoned, and only they
    # (the others heard the message and hung up); each is recorded as a DNC request.
    lead_of = {r["call_id"]: r["lead_id"] for r in rows}
    pressed = {c for c in abandoned if phones[lead_of[c]].endswith(("0", "5"))}
    assert pressed and pressed != abandoned
    assert set(pbx["opt_outs"]) == pressed and len(pbx["opt_outs"]) == len(pressed)
    assert {r["call_id"] for r in rows if r["disposition"] == "dnc_request"} == pressed
