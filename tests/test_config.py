"""Campaign files: refused with file, line, key and reason; the shipped ones load."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigError, load_campaign, parse_duration
from engine.pacing import available_pacers

ROOT = Path(__file__).resolve().parent.parent
MODES = set(available_pacers())


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_campaign(write(tmp_path, text), known_modes=MODES)
    return str(info.value)


@pytest.mark.parametrize("path", [*sorted((ROOT / "config").glob("*.toml")),
                                  *sorted((ROOT / "simulations" / "scenarios").glob("*.toml"))])
def test_shipped_configs_load(path):
    cfg = load_campaign(path, known_modes=MODES)
    assert cfg.id


def test_unknown_key_names_file_line_and_key(tmp_path):
    msg = refused(tmp_path, '[campaign]\nid = "x"\n\n[pacing]\nconect_limit = "2s"\n')
    assert msg == f"{tmp_path / 'c.toml'}:5: pacing.conect_limit: unknown key"


def test_abandon_target_30_is_refused(tmp_path):
    msg = refused(tmp_path, '[campaign]\nid = "x"\n[abandon]\ntarget = 30\n')
    assert ":4: abandon.target:" in msg and "less than or equal to 5" in msg and "30" in msg


def test_abandon_controller_settings_are_validated(tmp_path):
    cfg = load_campaign(write(tmp_path, '[campaign]\nid = "x"\n[abandon]\ncap_guard_room = 2\ngain = 0.2\n'
                                        'gain_min = 0.05\ngain_live = 300\n'), known_modes=MODES)
    ab = cfg.abandon
    assert (ab.cap_guard_room, ab.gain, ab.gain_min, ab.gain_live) == (2.0, 0.2, 0.05, 300.0)
    msg = refused(tmp_path, '[campaign]\nid = "x"\n[abandon]\ngain_live = 0\ncap_guard_room = -1\n')
    assert ":4: abandon.gain_live:" in msg and "greater than 0" in msg
    assert ":5: abandon.cap_guard_room:" in msg and "greater than or equal to 0" in msg
    msg = refused(tmp_path, '[campaign]\nid = "x"\n[abandon]\ngain = 0.05\ngain_min = 0.08\n')
    assert "abandon: gain_min: 0.08 is above gain (0.05)" in msg
    assert ":5: abandon.gain_min:" in refused(tmp_path, '[campaign]\nid = "x"\n[abandon]\ngain = 0.1\n'
                                                         'gain_min = 0\n')


def test_negative_ring_timeout_is_refused(tmp_path):
    msg = refused(tmp_path, '[campaign]\nid = "x"\n[pacing]\nring_timeout = "-5s"\n')
    assert "pacing.ring_timeout" in msg and "negative" in msg


def test_ring_timeout_below_the_legal_floor_is_refused(tmp_path):
    msg = refused(tmp_path, '[campaign]\nid = "x"\n[pacing]\nring_timeout = 10\n')
    assert "pacing.ring_timeout" in msg and "15" in msg


def test_window_end_before_start_is_refused(tmp_path):
    msg = refused(tmp_path, '[campaign]\nid = "x"\n[hours]\nstart = "21:00"\nend = "08:00"\n')
    assert "hours" in msg and "not after start" in msg


def test_wrong_type_is_refused(tmp_path):
    msg = refused(tmp_path, '[campaign]\nid = "x"\n[retry]\nmax_attempts = "many"\n')
    assert ":4: retry.max_attempts:" in msg and "integer" in msg


def test_missing_campaign_id(tmp_path):
    msg = refused(tmp_path, '[campaign]\nname = "x"\n')
    assert "campaign.id: required key is missing" in msg


def test_unknown_pacer_lists_the_available_ones(tmp_path):
    msg = refused(tmp_path, '[campaign]\nid = "x"\nmode = "turbo"\n')
    assert ":3: campaign.mode: unknown pacer 'turbo'" in msg and "predictive" in msg


def test_unknown_time_zone(tmp_path):
    assert "unknown time zone" in refused(tmp_path, '[campaign]\nid = "x"\ntimezone = "Mars/Olympus"\n')


def test_every_problem_is_reported_at_once(tmp_path):
    msg = refused(tmp_path, '[campaign]\nid = "x"\nbogus = 1\n[pacing]\nring_timeout = 3\n')
    assert "campaign.bogus" in msg and "pacing.ring_timeout" in msg


def test_invalid_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in refused(tmp_path, "[campaign\n")
    with pytest.raises(ConfigError, match="file not found"):
        load_campaign(tmp_path / "nope.toml")


@pytest.mark.parametrize(("text", "seconds"), [(30, 30.0), ("90s", 90.0), ("2m", 120.0), ("1.5h", 5400.0),
                                               ("30d", 2592000.0), ("500ms", 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5 weeks", True, "-3s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)
