"""Who may use the agent API: one secret token per person, with their role.

Tokens are secrets, so they never sit in a campaign file (which is copied, diffed
and pasted into tickets): they come from a file readable by the engine's user
only, or from an environment variable. Each entry is ``id:role:token``, one per
line in a file, where a token may hold any character but a line break (commas
included); in the environment entries are separated by commas or line breaks,
so a token there cannot hold a comma. ``#`` starts a comment line.
Only a SHA-256 digest of each token is kept in memory, and no error message or
log line ever contains one: a bad entry is named by its line number and field.
The file may change while a campaign runs (``engine.agent_api.server`` reads it
again); ``Roster.changes_from`` says who a new version adds, removes or changes.
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
# A comma followed by what starts an entry, inside a token of a file: several entries on one line, the
# way the environment separates them. Read as one token, it would lock both people out without a word.
_SECOND_ENTRY = re.compile(r",\s*[A-Za-z0-9][A-Za-z0-9_.-]{0,63}:(?:" + "|".join(ROLES) + r"):")


class TokenError(ValueError):
    """The token source is missing or malformed; the message names where, never a token.

    ``source`` (the file, or ``$VARIABLE``), ``line`` (None for the environment or the whole source) and
    ``field`` (``id``, ``role``, ``token``, ``entry`` for a malformed one, None for the whole source) say
    where, so a log line can carry them as fields.
    """

    def __init__(self, message: str, *, source: str = "", line: int | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.field = field


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
        self._digest_of: dict[str, bytes] = {}
        for actor, role, token in entries:
            self._add(actor, role, token, where=actor)

    def _add(self, actor: str, role: str, token: str, *, where: str, source: str = "",
             line: int | None = None) -> None:
        def bad(field: str, why: str) -> TokenError:
            return TokenError(f"{where}: {field}: {why}", source=source, line=line, field=field)

        if not _ID.match(actor):
            raise bad("id", f"{actor!r} is not an id (letters, digits, '_', '.', '-'; at most 64)")
        if role not in ROLES:
            raise bad("role", f"role {role!r} is not one of {', '.join(ROLES)}")
        if len(token) < MIN_TOKEN_LENGTH:
            raise bad("token", f"the token of {actor!r} is shorter than {MIN_TOKEN_LENGTH} characters "
                      "(make one with: python3 -c \"import secrets; print(secrets.token_urlsafe(24))\")")
        if actor in self._ids:
            raise bad("id", f"{actor!r} is listed twice")
        digest = _digest(token)
        if digest in self._by_digest:
            raise bad("token", f"{actor!r} has the same token as {self._by_digest[digest].actor!r}")
        self._by_digest[digest] = self._ids[actor] = Identity(actor, role)
        self._digest_of[actor] = digest

    @classmethod
    def parse(cls, text: str, source: str, *, file: bool = False) -> Roster:
        """Entries ``id:role:token`` from ``text``: one per line in a ``file``, else separated by commas or
        lines (the environment); errors name ``source`` and the line (or the entry's number)."""
        return cls._read(text, source, None, file)

    @classmethod
    def problems(cls, text: str, source: str, *, file: bool = False) -> list[TokenError]:
        """Every bad entry of ``text``, not just the first (``dialer check`` lists them all); empty if it parses."""
        found: list[TokenError] = []
        cls._read(text, source, found, file)
        return found

    @classmethod
    def _read(cls, text: str, source: str, problems: list[TokenError] | None, file: bool) -> Roster:
        """The roster of ``text``; the first error raised, or each one appended to ``problems``."""
        roster = cls(())
        n = 0
        by_line = file or "\n" in text.strip()
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip().startswith("#"):
                continue
            for part in [line] if file else line.split(","):
                entry = part.strip()
                if not entry:
                    continue
                n += 1
                where = f"{source}:{line_no}" if by_line else f"{source} (entry {n})"
                fields = entry.split(":", 2)
                try:
                    if len(fields) != 3:
                        raise TokenError(f"{where}: entry: expected id:role:token", source=source,
                                         line=line_no if by_line else None, field="entry")
                    if file and _SECOND_ENTRY.search(fields[2]):
                        raise TokenError(f"{where}: entry: one entry per line in a file (this line holds "
                                         "several, separated by commas)", source=source, line=line_no,
                                         field="entry")
                    roster._add(fields[0].strip(), fields[1].strip(), fields[2].strip(), where=where,
                                source=source, line=line_no if by_line else None)
                except TokenError as exc:
                    if problems is None:
                        raise
                    problems.append(exc)
        if not roster._ids and not (problems or []):
            empty = TokenError(f"{source}: no agent listed (entries are id:role:token)", source=source)
            if problems is None:
                raise empty
            problems.append(empty)
        return roster

    @classmethod
    def from_settings(cls, section: AgentsSection, environ: Mapping[str, str] | None = None) -> Roster:
        """The roster of ``[agents]``: ``tokens_file`` when set, else the ``tokens_env`` variable."""
        env = os.environ if environ is None else environ
        if section.tokens_file:
            path = Path(section.tokens_file)
            return cls.from_file(path)
        text = env.get(section.tokens_env, "")
        if not text.strip():
            raise TokenError(f"agents: no agent tokens: set agents.tokens_file, or the environment variable "
                             f"{section.tokens_env} (entries id:role:token)", source=f"${section.tokens_env}")
        return cls.parse(text, f"${section.tokens_env}")

    @classmethod
    def from_file(cls, path: str | Path) -> Roster:
        """The roster in ``path`` (``[agents] tokens_file``); read again on every reload."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenError(f"agents.tokens_file: cannot read {path}: {exc.strerror or exc}",
                             source=str(path)) from None
        except UnicodeDecodeError as exc:
            raise TokenError(f"agents.tokens_file: {path} is not UTF-8 text (byte {exc.start})",
                             source=str(path)) from None
        return cls.parse(text, str(path), file=True)

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

    def digest_of(self, token: str) -> bytes:
        """The form a token is remembered in (a connection keeps it, to be closed if the token is revoked)."""
        return _digest(token)

    def holds(self, who: Identity, digest: bytes) -> bool:
        """Whether ``who`` still signs in with the token of ``digest`` (False once revoked, changed or
        given another role)."""
        return self._by_digest.get(digest) == who

    def changes_from(self, old: Roster) -> RosterChange:
        """Who a reload adds, removes, or gives a new token or role (ids only: never a token)."""
        added = tuple(a for a in self._ids if a not in old._ids)
        removed = tuple(a for a in old._ids if a not in self._ids)
        changed = tuple(a for a in self._ids if a in old._ids and (
            self._ids[a] != old._ids[a] or self._digest_of[a] != old._digest_of[a]))
        return RosterChange(added, removed, changed)


@dataclass(frozen=True, slots=True)
class RosterChange:
    """What a roster reload changed, by id."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]  # a new token, or a new role

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        parts = [f"{what} {', '.join(ids)}" for what, ids in (("added", self.added), ("removed", self.removed),
                                                              ("token or role changed", self.changed)) if ids]
        return "; ".join(parts) or "no change"
