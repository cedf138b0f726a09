"""``dialer check`` of a campaign worked through the agent API: the token source (file or environment)
and the TLS files, every problem named by file, line and field, never a token; exit status 2.
Run as the real command, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_agent_api_tls import self_signed

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {name: f"{name.lower()}-token-0123456789abcdef" for name in ("A1", "A2", "S1")}
GOOD = f"# the floor\nA1:agent:{TOKENS['A1']}\nA2:agent:{TOKENS['A2']}\nS1:supervisor:{TOKENS['S1']}\n"


def dialer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "DIALER_AGENT_TOKENS"}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**clean, "PYTHONPATH": str(ROOT), **(env or {})})


def write_campaign(tmp_path: Path, **agents: str) -> Path:
    lines = ["[campaign]", 'id = "floor"', 'mode = "preview"', "", "[agents]", 'desk = "api"']
    lines += [f'{key} = "{value}"' for key, value in agents.items()]
    path = tmp_path / "floor.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tokens(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "agents.tokens"
    path.write_text(text)
    path.chmod(mode)
    return path


def no_token_in(out: subprocess.CompletedProcess[str]) -> bool:
    return not any(t in out.stdout + out.stderr for t in (*TOKENS.values(), "x" * 20, "y" * 20))


def test_check_accepts_a_good_token_file_and_tls_pair(tmp_path):
    cert, key = self_signed(tmp_path)
    cfg = write_campaign(tmp_path, tokens_file=str(tokens(tmp_path, GOOD)), tls_cert=str(cert), tls_key=str(key))
    out = dialer("check", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and out.stderr == "" and no_token_in(out)


def test_check_lists_every_bad_entry_with_file_line_and_field(tmp_path):
    text = "\n".join([
        "# the floor",
        f"A1:agent:{TOKENS['A1']}",
        f"A1:agent:{'y' * 20}",  # 3: the id again
        f"A2:agent:{TOKENS['A1']}",  # 4: A1's token again
        f"B1:boss:{'x' * 20}",  # 5: no such role
        "B2:agent:short",  # 6: too short to be a secret
        "B3-agent-no-colons",  # 7: not id:role:token
        "b@d:agent:" + "z" * 20,  # 8: not an id
    ])
    path = tokens(tmp_path, text, mode=0o644)
    cfg = write_campaign(tmp_path, tokens_file=str(path))
    out = dialer("check", str(cfg))
    assert out.returncode == 2 and "OK" not in out.stdout
    errors = [line for line in out.stderr.splitlines() if not line.startswith("warning: ")]
    assert errors == [
        f"{path}:3: id: 'A1' is listed twice",
        f"{path}:4: token: 'A2' has the same token as 'A1'",
        f"{path}:5: role: role 'boss' is not one of agent, supervisor, admin",
        f"{path}:6: token: the token of 'B2' is shorter than 16 characters (make one with: python3 -c "
        "\"import secrets; print(secrets.token_urlsafe(24))\")",
        f"{path}:7: entry: expected id:role:token",
        f"{path}:8: id: 'b@d' is not an id (letters, digits, '_', '.', '-'; at most 64)",
    ]
    assert f"warning: {path}: readable by others than the engine's user (mode 644): chmod 600 it" in out.stderr
    assert no_token_in(out)


def test_check_names_the_campaign_key_of_a_missing_source_or_tls_file(tmp_path):
    cfg = write_campaign(tmp_path, tokens_file=str(tmp_path / "nowhere.tokens"),
                         tls_cert=str(tmp_path / "nowhere.crt"), tls_key=str(tmp_path / "nowhere.key"))
    out = dialer("check", str(cfg))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"{cfg}:7: agents.tokens_file: cannot read {tmp_path / 'nowhere.tokens'}: No such file or directory",
        f"{cfg}:8: agents.tls_cert: cannot read {tmp_path / 'nowhere.crt'}: No such file or directory",
        f"{cfg}:9: agents.tls_key: cannot read {tmp_path / 'nowhere.key'}: No such file or directory",
    ]
    # Half a TLS pair is refused when the campaign is loaded, the missing key named.
    half = tmp_path / "half.toml"
    half.write_text(cfg.read_text().replace(f'tls_key = "{tmp_path / "nowhere.key"}"\n', ""))
    out = dialer("check", str(half))
    assert out.returncode == 2 and f"{half}:5: agents: tls_key: set together with tls_cert" in out.stderr


def test_check_reads_the_environment_when_there_is_no_file(tmp_path):
    cfg = write_campaign(tmp_path, tokens_env="FLOOR_TOKENS")
    unset = dialer("check", str(cfg))
    assert unset.returncode == 2
    assert f"{cfg}:7: agents.tokens_env: the environment variable FLOOR_TOKENS is not set" in unset.stderr
    bad = dialer("check", str(cfg), env={"FLOOR_TOKENS": f"A1:agent:{TOKENS['A1']}, A2:agent:{TOKENS['A1']}"})
    assert bad.returncode == 2 and no_token_in(bad)
    assert bad.stderr.strip() == "$FLOOR_TOKENS (entry 2): token: 'A2' has the same token as 'A1'"
    nobody = dialer("check", str(cfg), env={"FLOOR_TOKENS": f"S1:supervisor:{TOKENS['S1']}"})
    assert nobody.returncode == 2
    assert nobody.stderr.strip() == "$FLOOR_TOKENS: no entry with role agent: nobody could take a call"
    good = dialer("check", str(cfg), env={"FLOOR_TOKENS": f"A1:agent:{TOKENS['A1']}"})
    assert good.returncode == 0 and "OK" in good.stdout, good.stderr


def test_run_refuses_an_unreadable_tls_file_before_anything_starts(tmp_path):
    cert, _ = self_signed(tmp_path)
    cfg = write_campaign(tmp_path, tokens_file=str(tokens(tmp_path, GOOD)), tls_cert=str(cert),
                         tls_key=str(tmp_path / "gone.key"))
    out = dialer("run", str(cfg), "--realtime", "--quiet", "--results", str(tmp_path / "res"))
    assert out.returncode == 2
    gone = tmp_path / "gone.key"
    assert out.stderr.strip() == f"{cfg}:9: agents.tls_key: cannot read {gone}: No such file or directory"
