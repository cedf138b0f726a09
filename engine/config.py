"""Campaign configuration: TOML files validated on load.

An operator's typo must never turn into a silently different campaign, so an
unknown key, a wrong type or an impossible value is refused with the file, the
line when it can be found, the key and the reason. Legal floors (ring at least
15 s, abandon target at most a few percent) are enforced here, before anything
dials.
"""

from __future__ import annotations

import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from engine.compliance_config import ComplianceSection, HoursSection

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"2m"``, ``"1.5h"``, ``"30d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, \"30s\", \"5m\", \"2h\" or \"30d\"")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2) or "s"]
        if value.strip().startswith("-"):
            raise ValueError(f"{value!r} is negative; a duration must be zero or more")
    raise ValueError(f"{value!r} is not a duration such as 30, \"30s\", \"5m\", \"2h\" or \"30d\"")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class CampaignSection(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str = ""
    mode: str = "predictive"
    backend: Literal["sim", "asterisk"] = "sim"
    store: Literal["memory", "redis"] = "memory"
    timezone: str = "UTC"
    caller_id: str = "Dialer <0000000000>"
    plugins: list[str] = Field(default_factory=list)
    default_region: str = "US"


class PacingSection(_Section):
    connect_limit: Duration = Field(default=2.0, gt=0, le=10)
    ring_timeout: Duration = Field(default=25.0, ge=15, le=120)
    interval: Duration = Field(default=1.0, gt=0, le=60)
    max_dial_ratio: float = Field(default=4.0, ge=1, le=20)
    lease: Duration = Field(default=300.0, gt=0)
    preview_timeout: Duration = Field(default=60.0, gt=0)
    initial_answer_rate: float = Field(default=0.25, gt=0, le=1)
    drain_timeout: Duration = Field(default=600.0, ge=0)
    # Reserve a few leads before the pacer asks for them (engine/hopper.py), so that a decision's dials
    # wait only for the compliance gate, not for the store. Unset: on with a store that has a round trip
    # (Redis), off in memory. ``reserve_ahead_max_age``: how old a reserved lead's context may be when
    # it is dialled; older ones are given back.
    reserve_ahead: bool | None = None
    reserve_ahead_max_age: Duration = Field(default=1.0, gt=0, le=10)


class AbandonSection(_Section):
    target: float = Field(default=3.0, gt=0, le=5, description="percent of live answers")
    windows: list[Duration] = Field(default_factory=lambda: [30 * 86400.0])
    count_amd_false_positives: bool = False
    amd_false_positive_rate: float = Field(default=0.0, ge=0, le=1)
    # A person who hangs up in the silence before any agent was free was not connected within the
    # limit: counted as an abandon (the safe reading of TSR/Ofcom) unless a campaign says otherwise.
    count_early_hangups: bool = True
    # Hold every window's own measured rate under the target at every moment once this many live
    # answers are counted (a new campaign has no history for the controller's forecast to lean on).
    cap_guard: bool = True
    cap_guard_live: int = Field(default=100, ge=1)
    # The guard eases in over this many abandons of room under the cap (the allowance scaled by room /
    # cap_guard_room) instead of switching to the floor at the cap: a small team otherwise dials almost
    # progressively for twenty minutes each time it touches the cap. 0: the old all-or-nothing switch.
    cap_guard_room: float = Field(default=4.0, ge=0, le=100)
    # The controller's integral gain starts at ``gain`` (quick to correct a wrong prior answer rate) and
    # falls as gain x gain_live / (gain_live + live answers seen), down to ``gain_min``: a steady
    # allowance buys more talk time for the same abandons. gain_min > 0 keeps the outer feedback loop
    # alive all day (it is what corrects a biased model); gain_min = gain is a constant gain.
    gain: float = Field(default=0.1, gt=0, le=1)
    gain_min: float = Field(default=0.02, gt=0, le=1)
    gain_live: float = Field(default=200.0, gt=0, le=1_000_000)
    # The working target sits ``margin_z`` standard errors of the window's rate under the target, the
    # error counted over the window's live answers plus ``margin_prior_live`` pseudo-answers. Unset: 1.3
    # and 200 when a window is 24 h or shorter (a day's rate scatters widely at small teams), 0.7 and 1,000
    # for longer windows (see engine/pacing/controller.py).
    margin_z: float | None = Field(default=None, ge=0, le=5)
    margin_prior_live: float | None = Field(default=None, gt=0, le=1_000_000)

    @model_validator(mode="after")
    def _windows(self) -> AbandonSection:
        if self.gain_min > self.gain:
            raise ValueError(f"gain_min: {self.gain_min:g} is above gain ({self.gain:g}); the gain falls from "
                             "gain to gain_min, so gain_min must be at most gain")
        if self.count_amd_false_positives and self.amd_false_positive_rate <= 0:
            raise ValueError("count_amd_false_positives: set amd_false_positive_rate, the share of AMD machine "
                             "verdicts that are really people (e.g. 0.05 from a sample of recordings)")
        if not self.windows:
            raise ValueError("windows: at least one window is required (e.g. [\"30d\"])")
        for w in self.windows:
            if not 3600 <= w <= 31 * 86400:
                raise ValueError(f"windows: {w:g} s is outside 1 h to 31 days")
        return self


class AmdSection(_Section):
    enabled: bool = False
    machine_action: Literal["hangup", "connect"] = "hangup"


class RetrySection(_Section):
    max_attempts: int = Field(default=4, ge=1, le=50)
    busy: Duration = Field(default=900.0, ge=0)
    no_answer: Duration = Field(default=7200.0, ge=0)
    machine: Duration = Field(default=14400.0, ge=0)
    congestion: Duration = Field(default=300.0, ge=0)
    failed: Duration = Field(default=3600.0, ge=0)
    rejected: Duration = Field(default=86400.0, ge=0)
    abandoned: Duration = Field(default=259200.0, ge=0)
    customer_hangup: Duration = Field(default=86400.0, ge=0)
    interrupted: Duration = Field(default=600.0, ge=0)
    unknown: Duration = Field(default=3600.0, ge=0)
    skipped: Duration = Field(default=3600.0, ge=0)
    cancelled: Duration = Field(default=3600.0, ge=0)  # a preview call the agent called off while it rang


class CapsSection(_Section):
    per_day: int = Field(default=2, ge=1)
    per_24h: int = Field(default=3, ge=1)
    lifetime: int = Field(default=10, ge=1)


class Disposition(_Section):
    """What an agent's disposition does to the lead."""

    final: bool = False  # the lead is finished
    retry_after: Duration | None = None  # try again after this, within retry.max_attempts
    follow_up: Duration | None = None  # a follow-up task: called back after this, with priority
    same_agent: bool = False  # the follow-up goes to the agent who set it, when they are available
    customer_follow_ups: bool = False  # follow the customer type's schedule (e.g. hesitant: 3 d, 1 week)
    dnc: bool = False  # the number goes on the DNC list at once
    success: bool = False  # counts as a conversion in reports
    # Tags added to the lead with this disposition (e.g. "refused" -> ["refused"]); the lead is then
    # re-tiered by the [[ranking.tiers]] rules, so a tier rule on the tag routes (or skips) it next time.
    tags: list[str] = Field(default_factory=list)


class CustomerType(_Section):
    """A kind of customer and how to work them; named by the lead attribute ``customer_type``."""

    strategy: str = ""  # shown to the agent in the screen-pop
    questions: list[str] = Field(default_factory=list)  # discovery questions to ask
    offer: str | None = None  # offer rule, e.g. "10% off the first year" for price-sensitive customers
    follow_ups: list[Duration] = Field(default_factory=list)  # delays of successive follow-ups


def _default_customer_types() -> dict[str, CustomerType]:
    return {
        "explicit_need": CustomerType(strategy="Fast close: confirm the need, present the offer, close."),
        "implicit_need": CustomerType(strategy="Discovery first.",
                                      questions=["What made you look at this?", "What would change for you?"]),
        "price_sensitive": CustomerType(strategy="Lead with value, then the offer rule.",
                                        offer="10% off the first year"),
        "hesitant": CustomerType(strategy="No pressure; agree the next contact.",
                                 follow_ups=[3 * 86400.0, 7 * 86400.0]),
    }


def _default_dispositions() -> dict[str, Disposition]:
    return {
        "sale": Disposition(final=True, success=True),
        "callback": Disposition(follow_up=86400.0, same_agent=True),
        "not_interested": Disposition(final=True),
        "refused": Disposition(final=True, dnc=True),
        "dnc_request": Disposition(final=True, dnc=True),
        "wrong_number": Disposition(final=True),
        "answering_machine": Disposition(retry_after=14400.0),
        "undecided": Disposition(customer_follow_ups=True),
        "complaint": Disposition(final=True),
    }


class TierRule(_Section):
    """Leads matching this rule get this tier (the first matching rule wins; lower tiers dial first)."""

    tier: int = Field(ge=0, le=9)
    name: str = ""
    tags_any: list[str] = Field(default_factory=list)  # any of these tags
    attributes: dict[str, str] = Field(default_factory=dict)  # every attribute equal to this value
    inactive_days: int | None = Field(default=None, ge=1)  # attribute last_activity older than this
    skip: bool = False  # kept for nurture: never dialled by this campaign


class RankingSection(_Section):
    """Intent tiers and scoring by the built-in ranking plugin (plugins/ranking)."""

    tiers: list[TierRule] = Field(default_factory=list)
    default_tier: int = Field(default=1, ge=0, le=9)
    tag_scores: dict[str, float] = Field(default_factory=dict)  # score added per matching tag
    recency_days: float = Field(default=30.0, gt=0)  # newer last_activity scores higher, this half-life
    products: dict[str, list[str]] = Field(default_factory=dict)  # product -> tags it suits (offer matching)
    modes: dict[str, str] = Field(default_factory=dict)  # tier -> pacing mode, e.g. { "0" = "preview" }
    mode_skills: dict[str, str] = Field(default_factory=dict)  # mode -> agent skill it needs
    # Best time to call: unanswered leads are retried at the local hour the campaign's calls answer best.
    best_time: bool = False
    best_time_min_dials: int = Field(default=50, ge=1)  # calls an hour needs before it is trusted
    best_time_gain: float = Field(default=0.2, ge=0)  # relative gain over the proposed hour to move a retry
    # ... and, within a tier, leads whose zone's current local hour answers better come first: score points
    # added per percentage point of live-answer rate above the campaign's overall rate (0 = off).
    best_time_weight: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _tiers(self) -> RankingSection:
        for key in self.modes:
            if not key.isdigit() or not 0 <= int(key) <= 9:
                raise ValueError(f"modes: {key!r} is not a tier (0 to 9)")
        return self


class RiskSection(_Section):
    """Risk alerts by the built-in risk plugin (plugins/risk)."""

    complaint_dispositions: list[str] = Field(default_factory=lambda: ["complaint"])
    sensitive_words_attribute: str = "sensitive_words"


class ResultsSection(_Section):
    dir: str = "results"
    formats: list[Literal["csv", "jsonl"]] = Field(default_factory=lambda: ["csv", "jsonl"])


class CustomerModel(_Section):
    """Simulated called parties (used only by the ``sim`` backend and the simulator)."""

    answer_rate: float = Field(default=0.25, ge=0, le=1)
    machine_rate: float = Field(default=0.0, ge=0, le=1)
    busy_rate: float = Field(default=0.05, ge=0, le=1)
    failed_rate: float = Field(default=0.01, ge=0, le=1)
    invalid_rate: float = Field(default=0.005, ge=0, le=1)
    ring_mean: Duration = Field(default=8.0, gt=0)
    ring_shape: float = Field(default=4.0, gt=0)
    talk_mean: Duration = Field(default=120.0, gt=0)
    talk_distribution: Literal["exponential", "lognormal"] = "exponential"
    talk_sigma: float = Field(default=0.8, gt=0)
    machine_message: Duration = Field(default=20.0, gt=0)
    patience: Duration = Field(default=6.0, gt=0)
    amd_accuracy: float = Field(default=0.9, ge=0, le=1)
    amd_false_positive: float = Field(default=0.02, ge=0, le=1)
    sale_rate: float = Field(default=0.1, ge=0, le=1)
    refusal_rate: float = Field(default=0.02, ge=0, le=1)
    callback_rate: float = Field(default=0.1, ge=0, le=1)
    # A live person sent to the abandon message presses 9 (opt-out: the number goes on DNC) with this
    # probability. Unset: nobody in the ``sim`` backend, ``refusal_rate`` in the AMI emulator (its
    # long-standing stand-in); set, both speeds use it.
    opt_out_rate: float | None = Field(default=None, ge=0, le=1)
    # Live-answer probability for each hour of the shift (from its start; the last value holds after it).
    # Empty: ``answer_rate`` all day.
    hourly_answer_rate: list[float] = Field(default_factory=list)
    drift_to: float | None = Field(default=None, ge=0, le=1)  # answer rate drifts linearly to this ...
    drift_over: Duration = Field(default=8 * 3600.0, gt=0)  # ... over this long, then stays there


class AgentModel(_Section):
    """Simulated agents."""

    wrap_mean: Duration = Field(default=15.0, ge=0)
    wrap_fixed: bool = True
    think_mean: Duration = Field(default=8.0, ge=0)
    skip_rate: float = Field(default=0.05, ge=0, le=1)
    login_spread: Duration = Field(default=0.0, ge=0)  # agents log in at uniform times over this
    breaks: int = Field(default=0, ge=0, le=20)  # breaks each agent takes per shift, at random times
    break_mean: Duration = Field(default=600.0, gt=0)  # exponential length of a break


class AgentsSection(_Section):
    """Agent attributes the engine routes on, and who the agents are: simulated, or people on the agent API."""

    skills: dict[str, list[str]] = Field(default_factory=dict)  # agent id -> skills
    simulated_skills: dict[str, int] = Field(default_factory=dict)  # skill -> how many simulated agents have it
    # "sim": the simulated agents of [simulation]; "api": real people, over the agent API (docs/agent-api.md).
    desk: Literal["sim", "api"] = "sim"
    host: str = "127.0.0.1"  # where the agent API listens (put a TLS proxy in front of anything but loopback)
    port: int = Field(default=8780, ge=0, le=65535)  # 0: any free port (tests)
    # Agent identities: lines "id:role:token" (role agent, supervisor or admin), from this file or else from
    # the environment variable named by tokens_env. Never in the campaign file: tokens are secrets.
    tokens_file: str | None = None
    tokens_env: str = Field(default="DIALER_AGENT_TOKENS", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    wrap_up_timeout: Duration = Field(default=300.0, gt=0, le=1800)  # an agent silent this long in wrap-up ...
    default_disposition: str | None = None  # ... gets this disposition (None: the call's outcome decides)
    audit_log: str | None = None  # every read and change of lead data (default: <[results] dir>/audit.jsonl)
    # HTTPS/WSS in the engine: the PEM certificate (chain) and its private key, both or neither. Read at start.
    tls_cert: str | None = None
    tls_key: str | None = None

    @model_validator(mode="after")
    def _api(self) -> AgentsSection:
        if self.desk == "api" and not self.host.strip():
            raise ValueError("host: the agent API needs an address to listen on (e.g. \"127.0.0.1\")")
        for name, value in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if value is not None and not value.strip():
                raise ValueError(f"{name}: give the path of a PEM file, or leave it out")
        if (self.tls_cert is None) != (self.tls_key is None):
            missing, given = ("tls_key", "tls_cert") if self.tls_key is None else ("tls_cert", "tls_key")
            raise ValueError(f"{missing}: set together with {given} (TLS needs the certificate and its private "
                             "key), or leave both out")
        return self


class SimulationSection(_Section):
    agents: int = Field(default=10, ge=1, le=10000)
    leads: int = Field(default=3000, ge=0)
    seed: int = 1
    duration: Duration = Field(default=8 * 3600.0, gt=0)
    start: datetime = datetime(2026, 1, 5, 9, 0)
    customers: CustomerModel = CustomerModel()
    agent: AgentModel = AgentModel()


class AsteriskServer(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=5038, ge=1, le=65535)
    username: str = "dialer"
    secret_env: str = "DIALER_AMI_SECRET"
    secret_file: str | None = None


class AsteriskSection(_Section):
    servers: list[AsteriskServer] = Field(default_factory=lambda: [AsteriskServer()])
    customer_context: str = "dialer-customer"
    agent_context: str = "dialer-agent"
    abandon_context: str = "dialer-abandon"
    trunk: str = "PJSIP/{number}@trunk"
    action_timeout: Duration = Field(default=5.0, gt=0)
    ping_interval: Duration = Field(default=10.0, gt=0)
    # Who frames the AMI bytes: the engine's own framer ("native", the default: fastest, bounded) or
    # panoramisk's AMIProtocol ("panoramisk"); same rules either way (engine/pbx/asterisk.py).
    ami_transport: Literal["native", "panoramisk"] = "native"


class RedisSection(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = Field(default="dialer", pattern=r"^[A-Za-z0-9_.:-]+$")


class CampaignConfig(_Section):
    campaign: CampaignSection
    pacing: PacingSection = PacingSection()
    abandon: AbandonSection = AbandonSection()
    amd: AmdSection = AmdSection()
    retry: RetrySection = RetrySection()
    caps: CapsSection = CapsSection()
    hours: HoursSection = HoursSection()
    compliance: ComplianceSection = ComplianceSection()
    dispositions: dict[str, Disposition] = Field(default_factory=_default_dispositions)
    customer_types: dict[str, CustomerType] = Field(default_factory=_default_customer_types)
    results: ResultsSection = ResultsSection()
    ranking: RankingSection = RankingSection()
    agents: AgentsSection = AgentsSection()
    risk: RiskSection = RiskSection()
    simulation: SimulationSection | None = None
    asterisk: AsteriskSection = AsteriskSection()
    redis: RedisSection = RedisSection()
    # Plugins' own settings, one table per plugin name: [plugin.region_cap]. Each plugin checks its
    # table (hook dialer_check_settings); a table no loaded plugin owns is refused.
    plugin: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        """Dispositions and customer types named in the file add to (or override) the defaults."""
        if isinstance(data, dict):
            data = dict(data)
            for key, defaults in (("dispositions", _default_dispositions), ("customer_types", _default_customer_types)):
                if isinstance(data.get(key), dict):
                    data[key] = {**{k: v.model_dump() for k, v in defaults().items()}, **data[key]}
        return data

    @property
    def id(self) -> str:
        return self.campaign.id


class ConfigError(Exception):
    """A campaign file that must not be run; the message names file, line, key and reason."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}:{p}" if p[:1].isdigit() else f"{path}: {p}" for p in problems))


def _find_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line of ``loc``'s last key inside its TOML table (tomllib keeps no positions)."""
    keys = [str(k) for k in loc if not isinstance(k, int)]
    if not keys:
        return None
    table, key, current = ".".join(keys[:-1]), keys[-1], ""
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        m = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", line)
        if m:
            current = m.group(1)
            if current == ".".join(keys):
                return lineno
            continue
        if current == table and re.match(rf"^\"?{re.escape(key)}\"?\s*=", line):
            return lineno
    return None


def _describe(err: dict[str, Any], text: str) -> str:
    loc = tuple(err.get("loc", ()))
    key = ".".join(str(k) for k in loc) or "(top level)"
    kind, msg = err.get("type", ""), err.get("msg", "")
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind.startswith("value_error"):
        msg = msg.removeprefix("Value error, ")
    if "input" in err and kind not in ("missing", "extra_forbidden"):
        msg = f"{msg} (got {err['input']!r})"
    line = _find_line(text, loc)
    return f"{line}: {key}: {msg}" if line else f"{key}: {msg}"


def locate(path: str | Path, problems: list[tuple[tuple[str, ...], str]]) -> ConfigError:
    """A ConfigError for problems found after loading (e.g. by plugins), each ``(key path, reason)``,
    with the line of the key in the file where it can be found."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    lines = []
    for loc, reason in problems:
        line = _find_line(text, loc)
        key = ".".join(loc)
        lines.append(f"{line}: {key}: {reason}" if line else f"{key}: {reason}")
    return ConfigError(str(path), lines)


def load_campaign(path: str | Path, known_modes: set[str] | None = None) -> CampaignConfig:
    """Read and validate a campaign (or scenario) file; raise ConfigError naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return campaign_from_dict(data, source=str(path), text=text, known_modes=known_modes)


def campaign_from_dict(data: dict[str, Any], *, source: str = "<config>", text: str = "",
                       known_modes: set[str] | None = None) -> CampaignConfig:
    try:
        cfg = CampaignConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e, text) for e in exc.errors()]) from None
    problems = []
    if known_modes is not None and cfg.campaign.mode not in known_modes:
        line = _find_line(text, ("campaign", "mode"))
        where = f"{line}: " if line else ""
        problems.append(
            f"{where}campaign.mode: unknown pacer {cfg.campaign.mode!r} "
            f"(available: {', '.join(sorted(known_modes))})"
        )
    for tier, mode in cfg.ranking.modes.items():
        if known_modes is not None and mode not in known_modes:
            available = ", ".join(sorted(known_modes))
            problems.append(f"ranking.modes.{tier}: unknown pacer {mode!r} (available: {available})")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(cfg.campaign.timezone)
    except Exception:
        line = _find_line(text, ("campaign", "timezone"))
        where = f"{line}: " if line else ""
        problems.append(f"{where}campaign.timezone: unknown time zone {cfg.campaign.timezone!r}")
    default = cfg.agents.default_disposition
    if default is not None and default not in cfg.dispositions:
        line = _find_line(text, ("agents", "default_disposition"))
        where = f"{line}: " if line else ""
        problems.append(f"{where}agents.default_disposition: {default!r} is not a disposition of this campaign "
                        f"(configured: {', '.join(sorted(cfg.dispositions))})")
    if cfg.caps.lifetime < cfg.retry.max_attempts:
        problems.append(
            f"caps.lifetime: {cfg.caps.lifetime} is below retry.max_attempts {cfg.retry.max_attempts}"
        )
    if problems:
        raise ConfigError(source, problems)
    return cfg
