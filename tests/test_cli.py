"""The ``dialer`` command end to end, as a subprocess."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIALER = [sys.executable, "-m", "engine.cli"]


def dialer(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DIALER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


SMALL = """
[campaign]
id = "small"
mode = "{mode}"
timezone = "America/New_York"

[retry]
max_attempts = 2

[pacing]
drain_timeout = "{drain}"

[simulation]
agents = 5
leads = 4000
seed = 5
duration = "{duration}"

[simulation.customers]
answer_rate = 0.3
ring_mean = "{ring}"
talk_mean = "{talk}"

[simulation.agent]
wrap_mean = "5s"
think_mean = "2s"
"""


def small(tmp_path: Path, mode: str = "predictive", duration: str = "1h", drain: str = "10m",
          ring: str = "8s", talk: str = "60s") -> Path:
    p = tmp_path / f"small-{mode}.toml"
    p.write_text(SMALL.format(mode=mode, duration=duration, drain=drain, ring=ring, talk=talk))
    return p


def test_help_lists_every_command():
    out = dialer("--help")
    assert out.returncode == 0
    for command in ("run", "simulate", "check", "plugins", "pbx-emulator"):
        assert command in out.stdout
    run_help = dialer("run", "--help").stdout
    assert "--leads" in run_help and "--realtime" in run_help and "SIGINT" in run_help


def test_the_emulator_takes_its_own_options_after_the_global_ones():
    out = dialer("--log-level", "warning", "pbx-emulator", "--help")
    assert out.returncode == 0 and "--time-scale" in out.stdout and "--scenario" in out.stdout
    # a value that happens to read "pbx-emulator" is not the command
    other = dialer("check", "pbx-emulator")
    assert other.returncode == 2 and "file not found" in other.stderr


def test_check_accepts_the_example_and_refuses_a_bad_file(tmp_path):
    ok = dialer("check", "config/example.toml")
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[campaign]\nid = "x"\n[abandon]\ntarget = 30\n')
    out = dialer("check", str(bad))
    assert out.returncode == 2
    assert f"{bad}:4: abandon.target" in out.stderr


RULES_PLUGIN = """
from engine.hooks import hookimpl


@hookimpl
def dialer_check_settings(campaign):
    table = campaign.plugin.get("house_rules", {})
    limit = table.get("limit", 1)
    if not isinstance(limit, int) or limit < 1:
        return [f"limit: {limit!r} is not a whole number of calls (1 or more)"]
    return None
"""


@pytest.mark.parametrize(("table", "expected"), [
    ('[plugin.house_rules]\nlimit = 2\n', None),
    ('[plugin.house_rules]\nlimit = "two"\n', ":6: plugin.house_rules.limit: 'two' is not a whole number"),
    ('[plugin.house_rulez]\nlimit = 2\n', ":5: plugin.house_rulez: no loaded plugin is named 'house_rulez'"),
])
def test_check_runs_each_plugins_settings_check(tmp_path, table, expected):
    (tmp_path / "house_rules.py").write_text(RULES_PLUGIN)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[campaign]\nid = "x"\nplugins = ["house_rules"]\n\n' + table)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{tmp_path}"}
    for command in (["check", str(cfg)], ["run", str(cfg), "--quiet", "--results", str(tmp_path / "r")]):
        out = subprocess.run([*DIALER, *command], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        if expected is None:
            assert out.returncode == 0, out.stderr
            break  # the run itself is tested elsewhere
        assert out.returncode == 2 and f"{cfg}{expected}" in out.stderr, out.stderr
        assert not (tmp_path / "r").exists(), "a campaign with a bad plugin setting must not start"


def test_a_shared_store_needs_keys_of_its_own(tmp_path):
    cfg = tmp_path / "shared.toml"
    cfg.write_text('[campaign]\nid = "x"\nstore = "redis"\n[redis]\nurl = "redis://127.0.0.1:1/0"\n')
    leads = tmp_path / "leads.csv"
    leads.write_text("phone\n+12125550100\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env["PYTHONPATH"] = str(ROOT)
    for command in (["run", str(cfg), "--realtime", "--quiet"],
                    ["leads", "import", str(leads), "--campaign", str(cfg)]):
        out = subprocess.run([*DIALER, *command], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 2, out.stderr
        assert "development key(s) for DIALER_DATA_KEY and DIALER_INDEX_KEY" in out.stderr
    checked = subprocess.run([*DIALER, "check", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env=env)
    assert checked.returncode == 0 and "warning:" in checked.stderr and "`dialer run` will refuse it" in checked.stderr


@pytest.mark.parametrize("mode", ["preview", "progressive", "predictive"])
def test_run_a_campaign_to_the_end(tmp_path, mode):
    out = dialer("run", str(small(tmp_path, mode)), "--results", str(tmp_path / "res"), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["mode"] == mode and summary["errors"] == 0
    assert summary["dials"] > 50
    csv_path = Path(summary["results"]["csv"])
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == summary["after_drain"]["dials"] + summary["after_drain"]["interrupted"] \
        - sum(1 for r in rows if r["outcome"] == "interrupted" and r["ring_s"] == "")
    assert {r["outcome"] for r in rows} <= {"connected", "abandoned", "no_answer", "busy", "failed", "machine",
                                           "invalid_number", "customer_hangup", "congestion", "interrupted"}
    jsonl = Path(summary["results"]["jsonl"]).read_text().splitlines()
    assert len(jsonl) == len(rows)
    assert all("555" not in r["phone"] for r in rows)  # masked


def test_run_with_a_leads_file_reports_bad_rows(tmp_path):
    leads = tmp_path / "leads.csv"
    leads.write_text("lead_id,phone,tier\nA,+1 212 555 0101,1\nB,not a number,1\nC,(415) 555-0102,2\n"
                     "D,+12125550101,1\n")
    # 3 h: the 415 number is in California, closed until 08:00 there (11:00 in the campaign's New York)
    out = dialer("run", str(small(tmp_path, duration="3h")), "--leads", str(leads), "--results",
                 str(tmp_path / "r"), "--json")
    assert out.returncode == 0, out.stderr
    assert f"{leads}:3: phone:" in out.stderr
    assert f"{leads}: 1 rows merged" in out.stderr
    summary = json.loads(out.stdout)
    assert summary["dials"] >= 2


def test_run_refuses_a_leads_file_without_phone_column(tmp_path):
    leads = tmp_path / "leads.csv"
    leads.write_text("name,mobile_no\nA,+12125550101\n")
    out = dialer("run", str(small(tmp_path)), "--leads", str(leads))
    assert out.returncode == 2 and "no phone column" in out.stderr


def test_simulate_compares_pacers(tmp_path):
    out = dialer("simulate", str(small(tmp_path, duration="2h")), "--compare", "progressive,predictive", "--json")
    assert out.returncode == 0, out.stderr
    prog, pred = json.loads(out.stdout)
    assert prog["mode"] == "progressive" and pred["mode"] == "predictive"
    assert pred["occupancy"] > prog["occupancy"]
    table = dialer("simulate", str(small(tmp_path, duration="1h")), "--compare", "progressive,predictive")
    assert "occupancy" in table.stdout and "abandon rate" in table.stdout


def test_simulate_is_reproducible_by_seed(tmp_path):
    a = json.loads(dialer("simulate", str(small(tmp_path)), "--json", "--seed", "3").stdout)
    b = json.loads(dialer("simulate", str(small(tmp_path)), "--json", "--seed", "3").stdout)
    c = json.loads(dialer("simulate", str(small(tmp_path)), "--json", "--seed", "4").stdout)
    for key in ("dials", "live", "abandoned", "occupancy"):
        assert a[key] == b[key]
    assert a["seed"] == 3
    assert (a["dials"], a["live"]) != (c["dials"], c["live"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_dialling_drains_and_records_the_rest(tmp_path, sig):
    cfg = small(tmp_path, mode="progressive", duration="1h", drain="1s", ring="1s", talk="30s")
    res = tmp_path / "res"
    proc = subprocess.Popen([*DIALER, "run", str(cfg), "--realtime", "--results", str(res), "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        time.sleep(6)  # let calls get connected (answers after ~1 s, talks of ~30 s)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    rows = list(csv.DictReader(Path(summary["results"]["csv"]).open()))
    assert summary["after_drain"]["interrupted"] >= 1
    assert sum(r["outcome"] == "interrupted" for r in rows) == summary["after_drain"]["interrupted"]
    assert len(rows) == summary["after_drain"]["dials"]  # every dial has its row: nothing lost


def test_plugins_lists_pacers():
    out = dialer("plugins")
    assert out.returncode == 0
    assert "predictive" in out.stdout and "progressive" in out.stdout


def test_leads_import_writes_a_reject_report_and_a_clean_file(tmp_path):
    leads = tmp_path / "in.csv"
    leads.write_text("phone,tier\n+1 212 555 0101,1\nbad,1\n(212) 555-0101,0\n+1 415 555 0177,2\n")
    clean = tmp_path / "clean.jsonl"
    out = dialer("leads", "import", str(leads), "--campaign", str(small(tmp_path)), "--output", str(clean))
    assert out.returncode == 0, out.stderr
    assert "2 leads accepted" in out.stdout and "1 rejected" in out.stdout and "1 merged" in out.stdout
    rejects = list(csv.DictReader((tmp_path / "in.rejects.csv").open()))
    assert [(r["line"], r["field"], r["value"]) for r in rejects] == [("3", "phone", "bad")]
    rows = [json.loads(line) for line in clean.read_text().splitlines()]
    assert [(r["phone"], r["tier"]) for r in rows] == [("+12125550101", 0), ("+14155550177", 2)]
    run = dialer("run", str(small(tmp_path, duration="30m")), "--leads", str(clean), "--results", str(tmp_path / "r"),
                 "--json")
    assert run.returncode == 0, run.stderr


def test_the_demo_holds_its_abandon_rate_under_the_cap_hour_by_hour(tmp_path):
    # A new campaign: its 30-day window is this very day, so the rate must be under 3 % whenever it stops.
    out = dialer("run", "config/demo.toml", "--quiet", "--json", "--results", str(tmp_path))
    assert out.returncode == 0, out.stderr
    rep = dialer("report", "results", "config/demo.toml", json.loads(out.stdout)["results"]["csv"], "--json")
    hours = json.loads(rep.stdout)["by_hour"]
    assert len(hours) == 8
    assert all(h["abandon_rate_so_far"] <= 0.03 for h in hours), hours


def test_demo_with_tiers_and_its_results_report(tmp_path):
    out = dialer("run", "config/demo_tiers.toml", "--quiet", "--json", "--results", str(tmp_path), "--until", "7200")
    assert out.returncode == 0, out.stderr
    csv_path = json.loads(out.stdout)["results"]["csv"]
    rep = dialer("report", "results", "config/demo_tiers.toml", csv_path, "--json")
    assert rep.returncode == 0, rep.stderr
    report = json.loads(rep.stdout)
    assert set(report["by_tier"]) >= {"0", "1"}
    assert "hesitant" in report["by_customer_type"]
    assert report["total"]["conversions"] > 0 and report["follow_ups"]["created"] > 0
    # hour by hour, in the campaign's time zone: the demo starts at 09:00 New York and runs two hours
    hours = report["by_hour"]
    assert [h["hour"][-5:] for h in hours][:2] == ["09:00", "10:00"]
    assert sum(h["dials"] for h in hours) == report["total"]["dials"]
    live = sum(h["live"] for h in hours)
    abandoned = sum(h["abandoned"] for h in hours)
    assert hours[-1]["abandon_rate_so_far"] == pytest.approx(abandoned / live, abs=1e-4)
    # per agent: the calls each took add up to the contacts, and so do conversions and talk time
    agents = report["by_agent"]
    assert len(agents) == 10 and sum(a["calls"] for a in agents.values()) == report["total"]["contacts"]
    assert sum(a["conversions"] for a in agents.values()) == report["total"]["conversions"]
    rows = list(csv.DictReader(Path(csv_path).read_text(encoding="utf-8").splitlines()))
    talk = sum(float(r["talk_s"]) for r in rows if r["outcome"] == "connected" and r["talk_s"])
    assert sum(a["talk_min"] for a in agents.values()) == pytest.approx(talk / 60, abs=0.1 * len(agents))
    chart = tmp_path / "day.png"
    drawn = dialer("report", "results", "config/demo_tiers.toml", csv_path, "--chart", str(chart))
    assert drawn.returncode == 0, drawn.stderr
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "rate so far" in drawn.stdout


def test_prometheus_metrics_while_running(tmp_path):
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = small(tmp_path, mode="progressive", duration="1h", drain="1s", ring="1s", talk="30s")
    proc = subprocess.Popen([*DIALER, "run", str(cfg), "--realtime", "--quiet", "--json", "--results",
                             str(tmp_path / "r"), "--metrics-port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "dialer_dials_total" not in body:
            time.sleep(0.5)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
        assert 'dialer_dials_total{campaign="small"}' in body
        assert 'dialer_agents{campaign="small",state="ready"}' in body or "dialer_agents{" in body
        assert "dialer_abandon_allowance" in body
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
