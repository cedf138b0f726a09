"""Who may use the agent API: one secret token per person, with their role.

Tokens are secrets, so they never sit in a campaign file (which is copied, diffed
and pasted into tickets): they come from a file readable by the engine's user
only, or from an environment variable. Each entry is ``id:role:token``, one per
line (or separated by commas in the environment); ``#`` starts a comment line.
Only a SHA-256 digest of each token is kept in memory, and no error message or
log line ever contains one: a bad entry is named by its line number.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.config import AgentsSection
from engine.privacy import ROLES

MIN_TOKEN_LENGTH = 16  # shorter secrets can be guessed over the network
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TokenError(ValueError):
    """The token source is missing or malformed; the message names where, never a token."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling the API: an agent id (or a supervisor's / admin's) and the role it acts in."""

    actor: str
    role: str  # agent | supervisor | admin

    @property
    def takes_calls(self) -> bool:
        return self.role == "agent"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Roster:
    """The people allowed on the API, found by their token."""

    def __init__(self, entries: Iterable[tuple[str, str, str]]) -> None:
        self._by_digest: dict[bytes, Identity] = {}
        self._ids: dict[str, Identity] = {}
        for actor, role, token in entries:
            self._add(actor, role, token, where=actor)

    def _add(self, actor: str, role: str, token: str, *, where: str) -> None:
        if not _ID.match(actor):
            raise TokenError(f"{where}: {actor!r} is not an id (letters, digits, '_', '.', '-'; at most 64)")
        if role not in ROLES:
            raise TokenError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenError(f"{where}: the token of {actor!r} is shorter than {MIN_TOKEN_LENGTH} characters "
                             "(make one with: python3 -c \"import secrets; print(secrets.token_urlsafe(24))\")")
        if actor in self._ids:
            raise TokenError(f"{where}: {actor!r} is listed twice")
        digest = _digest(token)
        if digest in self._by_digest:
            raise TokenError(f"{where}: {actor!r} has the same token as {self._by_digest[digest].actor!r}")
        self._by_digest[digest] = self._ids[actor] = Identity(actor, role)

    @classmethod
    def parse(cls, text: str, source: str) -> Roster:
        """Entries ``id:role:token`` from ``text`` (lines or commas); errors name ``source`` and the entry number."""
        roster = cls(())
        n = 0
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip().startswith("#"):
                continue
            for part in line.split(","):
                entry = part.strip()
                if not entry:
                    continue
                n += 1
                where = f"{source}:{line_no}" if "\n" in text.strip() else f"{source} (entry {n})"
                fields = entry.split(":", 2)
                if len(fields) != 3:
                    raise TokenError(f"{where}: expected id:role:token")
                roster._add(fields[0].strip(), fields[1].strip(), fields[2].strip(), where=where)
        if not roster._ids:
            raise TokenError(f"{source}: no agent listed (entries are id:role:token)")
        return roster

    @classmethod
    def from_settings(cls, section: AgentsSection, environ: Mapping[str, str] | None = None) -> Roster:
        """The roster of ``[agents]``: ``tokens_file`` when set, else the ``tokens_env`` variable."""
        env = os.environ if environ is None else environ
        if section.tokens_file:
            path = Path(section.tokens_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise TokenError(f"agents.tokens_file: cannot read {path}: {exc.strerror or exc}") from None
            return cls.parse(text, str(path))
        text = env.get(section.tokens_env, "")
        if not text.strip():
            raise TokenError(f"agents: no agent tokens: set agents.tokens_file, or the environment variable "
                             f"{section.tokens_env} (entries id:role:token)")
        return cls.parse(text, f"${section.tokens_env}")

    def identify(self, token: str | None) -> Identity | None:
        """The identity a token belongs to, or None."""
        if not token:
            return None
        # Looked up by digest: what a timing difference could reveal is a hash of a guess, never the secret.
        return self._by_digest.get(_digest(token))

    @property
    def agents(self) -> tuple[str, ...]:
        """Ids of the people who take calls (role ``agent``), in the order listed."""
        return tuple(i.actor for i in self._ids.values() if i.takes_calls)

    def __contains__(self, actor: object) -> bool:
        return actor in self._ids
