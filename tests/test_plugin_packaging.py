"""Plugins as real packages: the examples installed into a fresh virtual environment, found through
their entry points, listed by ``dialer plugins``, vetoing dials in a ``dialer run``, and their own test
suites passing on the fixtures the engine ships; plus the errors a broken plugin gets.

The fresh environment works offline: it is created without pip, and its only view of the
outside world is a directory of links to the running environment's third-party packages
(dependencies, pip, setuptools, pytest) with the engine and every ``dialer_*`` package left out.
The engine and the examples are then installed into it with pip, from this tree, with no index.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from engine.plugins import PluginError, make_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
REGION_CAP, FIXED_RATIO = EXAMPLES / "compliance-region-cap", EXAMPLES / "pacer-fixed-ratio"
HIDDEN = ("dialer_", "__editable__", "__pycache__", "engine", "plugins", "simulations")  # never linked in

pytestmark = pytest.mark.slow


@dataclass
class Venv:
    path: Path
    env: dict[str, str]

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def run(self, *args: str, cwd: Path | None = None, extra_env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # never the repository as working directory: `python -c` would import the engine from there
        return subprocess.run(list(args), cwd=cwd or self.path.parent, env={**self.env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout, check=False)

    def pip_install(self, *targets: str) -> None:
        done = self.run(self.python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", *targets)
        assert done.returncode == 0, f"pip install {targets} failed:\n{done.stdout}\n{done.stderr}"


def _link_dependencies(into: Path) -> None:
    """Link every third-party package of the running environment, except the engine and dialer_* ones."""
    into.mkdir()
    seen = set()
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in sorted(Path(site).iterdir()):
            if entry.name in seen or entry.name.startswith(HIDDEN) or entry.suffix in (".pth", ".egg-link"):
                continue
            seen.add(entry.name)
            (into / entry.name).symlink_to(entry)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP") and not k.startswith("DIALER_")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    setuptools = version("setuptools")
    assert int(setuptools.split(".")[0]) >= 77, (
        f"setuptools {setuptools} cannot build the engine (pyproject needs >=77): "
        "install the test extra, which lists it")
    base = tmp_path_factory.mktemp("fresh")
    path = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    env = _clean_env()
    env["PATH"] = f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    v = Venv(path, env)
    site = v.run(v.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    _link_dependencies(base / "deps")
    Path(site, "_offline_deps.pth").write_text(f"{base / 'deps'}\n")

    hidden = v.run(v.python, "-c", "import engine")
    assert hidden.returncode != 0 and "No module named 'engine'" in hidden.stderr, "the engine leaked in"
    assert v.run(v.python, "-c", "import pluggy, pydantic, pytest, setuptools").returncode == 0

    v.pip_install("-e", str(ROOT))
    copies = []
    for example in (REGION_CAP, FIXED_RATIO):  # built from copies: no build/ or egg-info left in the tree
        copy = base / example.name
        shutil.copytree(example, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        copies.append(str(copy))
    v.pip_install(*copies)
    return v


def _campaign(tmp_path: Path, *, plugins: tuple[str, ...] = ()) -> Path:
    """A short simulated campaign at 20:05 New York time: past the region cap's 20:00 close in Florida."""
    leads = tmp_path / "leads.csv"
    rows = [f"FL{i},+1305555{i:04d},America/New_York" for i in range(1, 7)]
    rows += [f"NY{i},+1212555{i:04d},America/New_York" for i in range(1, 7)]
    leads.write_text("lead_id,phone,timezone\n" + "\n".join(rows) + "\n")
    cfg = tmp_path / "campaign.toml"
    cfg.write_text(textwrap.dedent(f"""
        [campaign]
        id = "fl-evening"
        mode = "fixed-ratio"
        timezone = "America/New_York"
        plugins = {json.dumps(list(plugins))}

        [retry]
        max_attempts = 1

        [results]
        dir = "{tmp_path / 'results'}"

        [simulation]
        agents = 2
        start = 2026-01-05T20:05:00
        duration = "20m"
        seed = 7
    """))
    return cfg


def _dialer_run(venv: Venv, tmp_path: Path, cfg: Path, **env: str) -> tuple[dict, list[dict]]:
    done = venv.run("dialer", "--log-level", "info", "--log-json", "run", str(cfg), "--leads",
                    str(tmp_path / "leads.csv"), "--json", "--quiet", cwd=tmp_path, extra_env=env)
    assert done.returncode == 0, done.stderr
    logs = [json.loads(line) for line in (done.stderr + done.stdout).splitlines() if line.startswith("{\"")]
    summary = next(x for x in logs if "dials" in x and "blocked" in x)
    return summary, [x for x in logs if x.get("event") == "dial blocked"]


# -- installed plugins are found, listed and used ---------------------------------------------------


def _listing(out: str) -> dict[str, list[str]]:
    """``dialer plugins`` output: each plugin or pacer line with the indented lines under it."""
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("    "):
            current.append(line.strip())
        elif line.startswith("  "):
            current = entries.setdefault(line.strip().split("  ", 1)[0], [line.strip()])
    return entries


def test_dialer_plugins_lists_the_installed_examples_where_from_and_their_hooks(venv):
    done = venv.run("dialer", "plugins")
    assert done.returncode == 0, done.stderr
    found = _listing(done.stdout)
    head, file, hooks = found["region_cap"]
    assert head == ("region_cap  (entry point dialer.plugins: region_cap = dialer_region_cap, "
                    "distribution dialer-region-cap 0.1.0)")
    assert file.startswith(f"file: {venv.path}/") and file.endswith("dialer_region_cap/__init__.py")
    assert hooks == "hooks: dialer_campaign_start, dialer_check_dial, dialer_check_settings"
    assert found["fixed-ratio"] == ["fixed-ratio  (entry point dialer.pacers: fixed-ratio = "
                                    "dialer_fixed_ratio:FixedRatioPacer, distribution dialer-fixed-ratio 0.1.0)"]
    assert found["ranking"][0].startswith("ranking  (entry point dialer.plugins: ranking = plugins.ranking, "
                                          "distribution dialer-engine ")
    assert found["predictive"] == ["predictive  (built in: engine.pacing.predictive.PredictivePacer)"]


def test_a_simulated_campaign_shows_the_installed_plugins_veto(venv, tmp_path):
    cfg = _campaign(tmp_path)
    summary, blocked = _dialer_run(venv, tmp_path, cfg)
    assert summary["mode"] == "fixed-ratio"  # the pacer plugin dialled
    assert summary["blocked"] == 6 and summary["dials"] == 6  # the six Florida leads, after 20:00 local
    assert sorted(b["lead_id"] for b in blocked) == [f"FL{i}" for i in range(1, 7)]
    assert {b["rule"] for b in blocked} == {"region_cap.hours"}
    assert all("outside 08:00-20:00" in b["reason"] for b in blocked)
    rows = [json.loads(line) for f in (tmp_path / "results").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(r["lead_id"] for r in rows) == [f"NY{i}" for i in range(1, 7)]
    # ... and in the compliance report the run leaves next to its results
    assert summary["compliance"]["blocked_all"] == {"region_cap.hours": 6}
    report = next((tmp_path / "results").glob("*-compliance.txt")).read_text()
    assert re.search(r"^region_cap\.hours\s+6\s+6\s+6$", report, re.M), report


def test_the_same_campaign_with_the_window_widened_blocks_nothing(venv, tmp_path):
    cfg = _campaign(tmp_path)
    summary, blocked = _dialer_run(venv, tmp_path, cfg, DIALER_REGION_CAP_HOURS="08:00-22:00")
    assert summary["blocked"] == 0 and blocked == [] and summary["dials"] == 12


def test_the_examples_own_test_suites_pass_on_the_shipped_fixtures(venv):
    for example, at_least in ((REGION_CAP, 10), (FIXED_RATIO, 10)):
        # no -p, no conftest: the fixtures come from the engine's pytest11 entry point
        done = venv.run(venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=example,
                        timeout=180)
        tail = done.stdout[-3000:]
        assert "fixture 'dial_once' not found" not in done.stdout, (
            "the engine's fixtures are not a pytest plugin of the installed engine: pyproject.toml needs "
            '[project.entry-points.pytest11] "engine.testing" = "engine.testing"')
        assert done.returncode == 0, f"{example.name}:\n{tail}\n{done.stderr[-2000:]}"
        passed = int(tail.rsplit(" passed", 1)[0].split()[-1])
        assert passed >= at_least and " skipped" not in tail and " error" not in tail, tail


# -- a missing or broken plugin is refused, by name ---------------------------------------------------


def test_a_campaign_naming_a_missing_plugin_refuses_to_start(venv, tmp_path):
    cfg = _campaign(tmp_path, plugins=("dialer_region_capp",))
    check = venv.run("dialer", "check", str(cfg))
    assert check.returncode == 2 and "'dialer_region_capp'" in check.stderr and "campaign.plugins" in check.stderr
    run = venv.run("dialer", "run", str(cfg), "--leads", str(tmp_path / "leads.csv"), "--json", "--quiet",
                   cwd=tmp_path)
    assert run.returncode == 2, "a campaign whose plugin is missing must not run"
    assert "Traceback" not in run.stderr
    assert "plugin 'dialer_region_capp' named in the campaign (campaign.plugins) failed to import" in run.stderr
    rows = [line for f in (tmp_path / "results").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert rows == [], "nothing may be dialled"


def test_a_broken_installed_plugin_is_named_with_its_entry_point(venv, tmp_path):
    # a real distribution on the path: metadata + entry point, the way pip would leave it
    _fake_distribution(tmp_path, "acme_rules_typo", HOOKIMPL + "def dialer_chek_dial(ctx):\n    return None\n")
    done = venv.run("dialer", "plugins", extra_env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2
    assert ("plugin 'acme' (entry point dialer.plugins: acme = acme_rules_typo, distribution acme-rules 1.2) "
            "implements a hook that does not exist: dialer_chek_dial; did you mean dialer_check_dial?") in done.stderr
    assert "Traceback" not in done.stderr


HOOKIMPL = "from engine.hooks import hookimpl\n\n\n@hookimpl\n"


def _fake_distribution(where: Path, module: str, source: str) -> None:
    """Distribution ``acme-rules 1.2`` with entry point ``acme = <module>`` in ``dialer.plugins``."""
    (where / f"{module}.py").write_text(source)
    info = where / "acme_rules-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rules\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[dialer.plugins]\nacme = {module}\n")


# -- the same errors, in process -------------------------------------------------------------------

ORIGIN = "plugin 'acme' (entry point dialer.plugins: acme = {}, distribution acme-rules 1.2)"


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("acme_rules_import", "import no_such_dependency_xyz\n",
     "failed to import: ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
    ("acme_rules_args", HOOKIMPL + "def dialer_check_dial(context, campaign):\n    return None\n",
     "does not fit the hook specs: Plugin 'acme' for hook 'dialer_check_dial'"),
    ("acme_rules_hook", HOOKIMPL + "def dialer_rank_leads(lead):\n    return 1.0\n",
     "implements a hook that does not exist: dialer_rank_leads; did you mean dialer_rank_lead?"),
])
def test_entry_point_plugin_errors_name_the_plugin_entry_point_and_distribution(tmp_path, monkeypatch, module,
                                                                                source, expected):
    _fake_distribution(tmp_path, module, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as err:
        make_plugin_manager()
    assert f"{ORIGIN.format(module)} {expected}" in str(err.value)
    if "args" in module:
        assert "{'context'}" in str(err.value)


def test_a_campaign_may_name_an_installed_plugin_or_its_module(venv, tmp_path):
    # "region_cap" is an installed entry point's name; "plugins.ranking" is the module behind the engine's
    # "ranking" entry point: both load, once each
    cfg = tmp_path / "c.toml"
    cfg.write_text('[campaign]\nid = "c"\nmode = "progressive"\nplugins = ["region_cap", "plugins.ranking"]\n')
    done = venv.run("dialer", "plugins", "--campaign", str(cfg))
    assert done.returncode == 0, done.stderr
    found = _listing(done.stdout)
    assert "region_cap" in found and "ranking" in found and "plugins.ranking" not in found
    assert done.stdout.count("dialer_region_cap/__init__.py") == 1


# -- the shipped fixtures themselves ------------------------------------------------------------------


def test_fake_clock_moves_only_when_told(fake_clock):
    start = fake_clock.now()
    assert fake_clock.datetime().isoformat() == "2026-01-05T14:00:00+00:00"
    assert fake_clock.advance("5m") == start + 300 and fake_clock.now() == start + 300
    fake_clock.set("2026-01-05 09:30")
    assert fake_clock.datetime("America/New_York").hour == 4


def test_dial_once_fails_closed_reports_engine_refusals_and_alerts(dial_once, make_lead):
    from engine.hooks import hookimpl
    from engine.models import Alert

    class Broken:
        @hookimpl
        def dialer_check_dial(self, ctx):
            raise RuntimeError("bug")

    class Warns:
        @hookimpl
        def dialer_risk_alerts(self, ctx):
            return [Alert("vip", "VIP")]

    broken = dial_once(Broken())
    assert broken.vetoed and broken.veto.rule == "plugin_error" and not broken.dialled
    on_dnc = dial_once(Warns(), dnc=True)
    assert on_dnc.allowed and not on_dnc.dialled and on_dnc.refused.rule == "dnc"
    fine = dial_once(Warns(), lead=make_lead("+12125550199", tags=["x"]))
    assert fine.dialled and [a.code for a in fine.alerts] == ["vip"] and fine.result["outcome"] == "connected"
    assert fine.context.lead.tags == ("x",) and fine.blocks == ()


def test_earlier_calls_count_like_real_ones(dial_once, make_lead):
    out = dial_once(lead=make_lead(timezone="America/New_York"), at="2026-01-05 10:00",
                    earlier_calls=["30m", "2h", "11h", "25h"])
    assert (out.context.attempts_today, out.context.attempts_24h, len(out.context.history)) == (2, 3, 4)
    assert out.context.day_key == "2026-01-05"
    assert out.refused.rule == "cap_per_day" and not out.dialled  # the engine's own cap: 2 a day
