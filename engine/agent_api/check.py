"""What ``dialer check`` verifies of the agent API (``[agents] desk = "api"``) before anyone relies on it.

A campaign whose token file is unreadable, malformed or empty would start with nobody able to log in;
one whose TLS files are wrong would fail every agent's handshake. Each problem is one line naming the
file, the line and the field (the campaign's key, or the entry of the token source), never a token, so
an operator can fix them all in one go rather than one restart at a time.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from engine.agent_api.tls import TlsError, server_context
from engine.agent_api.tls import problems as tls_problems
from engine.agent_api.tokens import Roster
from engine.config import CampaignConfig, locate


def agent_api_problems(cfg: CampaignConfig, path: str,
                       environ: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` of the campaign at ``path``'s agent API: the token source (readable, parses,
    at least one agent, no duplicate ids or tokens, valid roles) and the TLS files."""
    env = os.environ if environ is None else environ
    section = cfg.agents
    in_campaign: list[tuple[tuple[str, ...], str]] = []  # located at the key in the campaign file
    errors: list[str] = []
    warnings: list[str] = []
    text, source = None, ""
    if section.tokens_file:
        source = section.tokens_file
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            in_campaign.append((("agents", "tokens_file"), f"cannot read {source}: {exc.strerror or exc}"))
        except UnicodeDecodeError as exc:
            in_campaign.append((("agents", "tokens_file"), f"{source} is not UTF-8 text (byte {exc.start})"))
        else:
            mode = os.stat(source).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                warnings.append(f"{source}: readable by others than the engine's user (mode "
                                f"{stat.S_IMODE(mode):o}): chmod 600 it")
    else:
        source = f"${section.tokens_env}"
        text = env.get(section.tokens_env)
        if not text or not text.strip():
            in_campaign.append((("agents", "tokens_env"), f"the environment variable {section.tokens_env} is not "
                                "set (entries id:role:token), and agents.tokens_file is not set either"))
            text = None
    if text is not None:
        in_file = bool(section.tokens_file)
        problems = Roster.problems(text, source, file=in_file)
        errors += [str(p) for p in problems]
        if not problems and not Roster.parse(text, source, file=in_file).agents:
            errors.append(f"{source}: no entry with role agent: nobody could take a call")
    tls = tls_problems(section)
    if not tls:
        try:
            server_context(section)  # the key is the certificate's
        except TlsError as exc:
            tls = [exc]
    in_campaign += [(("agents", exc.field), exc.reason) for exc in tls]
    located = str(locate(path, in_campaign)).splitlines() if in_campaign else []
    return located + errors, warnings
