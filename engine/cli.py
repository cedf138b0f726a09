"""The ``dialer`` command.

Exit codes: 0 success, 1 the run failed (e.g. the PBX refused our login),
2 bad input (config, leads file, arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from engine import logs
from engine.config import CampaignConfig, ConfigError, load_campaign

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
T = TypeVar("T")

KPI_ROWS = [
    ("agents", "agents"),
    ("logged_in_h", "logged-in hours"),
    ("dials", "dials"),
    ("live", "live answers"),
    ("connected", "connected to an agent"),
    ("abandoned", "abandoned"),
    ("abandon_rate", "abandon rate (abandoned / live)"),
    ("occupancy", "occupancy ((talk + wrap) / logged in)"),
    ("talk_min_per_agent_hour", "talk minutes per agent hour"),
    ("contact_rate", "live answers per dial"),
    ("blocked", "dials blocked by the gate"),
    ("machines", "answering machines"),
    ("amd_false_positives", "AMD false positives (estimated, in abandoned)"),
    ("errors", "call handling errors"),
]


def _known_modes() -> set[str]:
    from engine.pacing import available_pacers

    return set(available_pacers())


def _load(path: str) -> CampaignConfig:
    return load_campaign(path, known_modes=_known_modes())


def _fmt(key: str, value: Any) -> str:
    if key in ("abandon_rate", "contact_rate"):
        return f"{value * 100:.2f} %"
    if key == "occupancy":
        return f"{value:.3f}"
    return str(value)


def print_summary(summaries: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="campaign results" if len(summaries) == 1 else "pacers compared, same scenario")
    table.add_column("figure")
    for s in summaries:
        table.add_column(str(s.get("mode", "")), justify="right")
    for key, label in KPI_ROWS:
        table.add_row(label, *(_fmt(key, s.get(key, "")) for s in summaries))
    table.add_row("seed", *(str(s.get("seed", "")) for s in summaries))
    table.add_row("wall time (s)", *(str(s.get("wall_s", "")) for s in summaries))
    console.print(table)


# -- dialer check -------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.campaign)
    _checked_plugins(cfg, args.campaign)
    keys = _development_keys(cfg)
    if keys:
        print(f"{args.campaign}: warning: {keys}; `dialer run` will refuse it", file=sys.stderr)
    if cfg.agents.desk == "api":  # the people's tokens and the TLS files, before anyone relies on them
        from engine.agent_api.check import agent_api_problems

        errors, warnings = agent_api_problems(cfg, args.campaign)
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        if errors:
            print("\n".join(errors), file=sys.stderr)
            return EXIT_BAD_INPUT
    print(f"{args.campaign}: OK (campaign {cfg.id!r}, mode {cfg.campaign.mode}, backend {cfg.campaign.backend}, "
          f"store {cfg.campaign.store}, abandon target {cfg.abandon.target} %)")
    return EXIT_OK


def _checked_plugins(cfg: CampaignConfig, path: str) -> Any:
    """The campaign's plugin manager, once every plugin loaded and accepted its settings."""
    from engine.config import locate
    from engine.plugins import make_plugin_manager, settings_problems

    pm = make_plugin_manager(cfg.campaign.plugins)
    problems = settings_problems(pm, cfg)
    if problems:
        raise locate(path, problems)
    return pm


# -- dialer run ---------------------------------------------------------------------------


def _build_store(cfg: CampaignConfig) -> Any:
    if cfg.campaign.store == "redis":
        from engine.store.redis import RedisStore

        return RedisStore(cfg.redis.url, prefix=cfg.redis.prefix)
    from engine.store.memory import MemoryStore

    return MemoryStore()


async def _run_campaign(cfg: CampaignConfig, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from engine.results import ResultWriter
    from engine.status import show
    from simulations.runner import run_sim_campaign

    leads = None
    store = _build_store(cfg)
    if hasattr(store, "check_layout"):  # data of an older key layout is never dialled against
        try:
            await store.check_layout()
        except BaseException:
            await store.close()
            raise
    if args.leads:
        try:
            report = await _clean_leads(args.leads, cfg, store, cfg.campaign.default_region)
        except BaseException:
            await store.close()
            raise
        _print_rejects(args.leads, report)
        leads = report.leads
    elif cfg.campaign.store != "memory" and (cfg.simulation is None or "leads" not in cfg.simulation.model_fields_set):
        leads = []  # a shared store already holds the campaign's leads (`dialer leads import`): add no invented ones
    stem = f"{cfg.id}-{time.strftime('%Y%m%dT%H%M%S')}-{args.node_id}"
    results = ResultWriter(args.results or cfg.results.dir, stem, list(cfg.results.formats))
    backend, clock = None, None
    if cfg.campaign.backend != "sim" or cfg.campaign.store != "memory":
        from engine.clock import SystemClock

        clock = SystemClock()  # real people or shared state: calling windows and caps on the real date
    if cfg.campaign.backend == "asterisk":
        from engine.pbx.asterisk import AsteriskBackend, AsteriskConfig

        backend = AsteriskBackend(AsteriskConfig.from_settings(cfg))
    loop = asyncio.get_running_loop()
    holder: dict[str, Any] = {}
    attached = asyncio.Event()

    def attach(dialer: Any) -> None:
        holder["dialer"] = dialer
        attached.set()
        if args.metrics_port:
            from engine.metrics import serve

            serve(dialer, args.metrics_port, args.metrics_addr)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, dialer.stop)
        if cfg.agents.desk == "api":  # SIGHUP: the agent API reads its tokens file again (docs/agent-api.md)
            loop.add_signal_handler(signal.SIGHUP, dialer.desk.reload_tokens)

    async def status_when_ready() -> None:
        await attached.wait()
        await show(holder["dialer"], console=console)

    try:
        async with asyncio.TaskGroup() as tg:
            status = tg.create_task(status_when_ready()) if not args.quiet else None
            if cfg.agents.desk == "api":  # real people over the agent API (docs/agent-api.md)
                summary = await _run_with_agent_api(cfg, args, leads=leads, store=store, results=results,
                                                    on_dialer=attach, backend=backend, clock=clock)
            else:
                summary = await run_sim_campaign(cfg, leads=leads, store=store, results=results,
                                                 node_id=args.node_id, on_dialer=attach,
                                                 until=args.until, backend=backend, clock=clock)
            if status is not None:
                status.cancel()
        summary["compliance"] = await _write_compliance(cfg, store, holder["dialer"].clock.now(), results)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await store.close()
    summary["results"] = {k: str(v) for k, v in results.paths.items()}
    return summary


async def _run_with_agent_api(cfg: CampaignConfig, args: argparse.Namespace, **kwargs: Any) -> dict[str, Any]:
    """The campaign worked by the people of the token roster, through the agent API."""
    from engine.agent_api.run import audit_path, run_api_campaign
    from engine.agent_api.tokens import Roster
    from engine.audit import AuditLog
    from engine.clock import SystemClock

    audit = AuditLog(audit_path(cfg, args.results), clock=SystemClock().now)
    scheme = "https" if cfg.agents.tls_cert else "http"
    print(f"agent API on {scheme}://{cfg.agents.host}:{cfg.agents.port}/api/v1 (audit log: {audit.path})",
          file=sys.stderr)
    return await run_api_campaign(cfg, roster=Roster.from_settings(cfg.agents), audit=audit,
                                  node_id=args.node_id, until=args.until, **kwargs)


def _windows(cfg: CampaignConfig) -> list[float]:
    """The campaign's regulatory windows, and always the Ofcom 24 h one for comparison."""
    return sorted({86_400.0, *cfg.abandon.windows})


async def _write_compliance(cfg: CampaignConfig, store: Any, now: float, results: Any) -> dict[str, Any]:
    """The compliance report at the end of a run, next to the results files (the in-memory store
    is gone once the process exits, so this is its only record)."""
    from engine.report import compliance_report, format_compliance_report

    report = await compliance_report(store, cfg.id, now=now, windows=_windows(cfg))
    if results.paths:
        first = next(iter(results.paths.values()))
        path = first.with_name(first.name.rsplit(".", 1)[0] + "-compliance.txt")
        path.write_text(format_compliance_report(report), encoding="utf-8")
        results.paths["compliance"] = path
    return report


def _print_rejects(path: str, report: Any, limit: int = 20) -> None:
    for r in report.rejects[:limit]:
        print(f"{path}:{r.line}: {r.field}: {r.reason} (value {r.value!r})", file=sys.stderr)
    if len(report.rejects) > limit:
        print(f"{path}: ... and {len(report.rejects) - limit} more rejected rows", file=sys.stderr)
    if report.merged:
        print(f"{path}: {report.merged} rows merged into earlier rows with the same number", file=sys.stderr)


async def _clean_leads(path: str, cfg: CampaignConfig, store: Any, region: str) -> Any:
    """A lead file cleaned (``engine.leads``), less the numbers the store learnt are invalid from
    earlier calls: a re-import never brings them back. Those are rejected with their line."""
    from engine.leads import load_leads

    report = load_leads(path, cfg.id, region)
    flags = await store.invalid_numbers([lead.phone for lead in report.leads])
    invalid = {lead.phone for lead, bad in zip(report.leads, flags, strict=True) if bad}
    return load_leads(path, cfg.id, region, known_invalid=invalid) if invalid else report


def cmd_leads_import(args: argparse.Namespace) -> int:
    cfg = _load(args.campaign)
    region = args.region or cfg.campaign.default_region
    keys = _development_keys(cfg)
    if keys:
        print(f"{args.campaign}: {keys}; nothing was imported", file=sys.stderr)
        return EXIT_BAD_INPUT

    async def clean() -> Any:
        store = _build_store(cfg)
        try:
            return await _clean_leads(args.file, cfg, store, region)
        finally:
            await store.close()

    report = asyncio.run(clean())
    _print_rejects(args.file, report)
    rejects = args.rejects or str(Path(args.file).with_suffix("")) + ".rejects.csv"
    report.write_rejects(rejects)
    if args.output:
        with Path(args.output).open("w", encoding="utf-8") as f:
            for lead in report.leads:
                f.write(json.dumps({"lead_id": lead.lead_id, "phone": lead.phone, "tier": lead.tier,
                                    "score": lead.score, "timezone": lead.timezone, "tags": list(lead.tags),
                                    "consent_source": lead.consent_source,
                                    "consent_expires": lead.consent_expires.isoformat()
                                    if lead.consent_expires else None, **lead.attributes}) + "\n")

    async def store_them() -> int:
        store = _build_store(cfg)
        try:
            return await store.add_leads(report.leads)
        finally:
            await store.close()

    new = asyncio.run(store_them()) if cfg.campaign.store != "memory" else len(report.leads)
    where = (f"store {cfg.campaign.store}" if cfg.campaign.store != "memory"
             else "nothing stored: campaign.store is \"memory\" (use --output for a clean file for `dialer run`)")
    print(f"{args.file}: {len(report.leads)} leads accepted ({new} new), {len(report.rejects)} rejected "
          f"(report: {rejects}), {report.merged} merged; {where}")
    return EXIT_OK


def _development_keys(cfg: CampaignConfig) -> str | None:
    """Why a shared store must not be used with the built-in keys, or None: they are public, so the
    numbers and personal data they protect would be readable by anyone with the source."""
    if cfg.campaign.store == "memory" or os.environ.get("DIALER_ALLOW_DEVELOPMENT_KEYS") == "1":  # a lab
        return None
    from engine.crypto import FieldCipher
    from engine.pii import BlindIndex

    missing = [name for name, dev in (("DIALER_DATA_KEY", FieldCipher.from_env().is_development),
                                      ("DIALER_INDEX_KEY", BlindIndex.from_env().is_development)) if dev]
    if not missing:
        return None
    return (f"campaign.store = {cfg.campaign.store!r} with the built-in development key(s) for "
            f"{' and '.join(missing)}: personal data in a shared store needs keys of your own (64 hex digits "
            "each, in the environment or in the file named by <NAME>_FILE; see engine/crypto.py)")


def _check_runnable(cfg: CampaignConfig, path: str, args: argparse.Namespace) -> str | None:
    """Why this campaign cannot run as asked, or None. Checked before anything starts: a campaign whose
    plugin or pacer is missing is refused rather than run without its gate."""
    from engine.pacing import make_pacer

    _checked_plugins(cfg, path)  # PluginError / ConfigError: exit 2 with the plugin or setting named
    try:
        make_pacer(cfg.campaign.mode)
    except (KeyError, ImportError, TypeError) as exc:
        return f"{path}: campaign.mode: {exc}"
    keys = _development_keys(cfg)
    if keys:
        return f"{path}: {keys}; for a lab run only, DIALER_ALLOW_DEVELOPMENT_KEYS=1"
    if cfg.agents.desk == "api":
        from engine.agent_api.tokens import Roster, TokenError

        if not args.realtime:
            return f"{path}: agents.desk = \"api\": real people work in real time: add --realtime"
        try:
            Roster.from_settings(cfg.agents)
        except TokenError as exc:
            return f"{path}: {exc}"
        from engine.agent_api.tls import TlsError, server_context

        try:
            server_context(cfg.agents)
        except TlsError as exc:
            from engine.config import locate

            return str(locate(path, [(("agents", exc.field), exc.reason)]))
    if not args.realtime and (cfg.campaign.backend != "sim" or cfg.campaign.store != "memory"):
        what = "backend " + repr(cfg.campaign.backend) if cfg.campaign.backend != "sim" \
            else "store " + repr(cfg.campaign.store)
        return (f"{path}: campaign {what} runs on the wall clock (its timeouts and leases are real): "
                "add --realtime")
    return None


def _first(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` inside ``exc`` (task groups nest the one error that matters)."""
    if isinstance(exc, kind):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _first(inner, kind)
        if found is not None:
            return found
    return None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.campaign)
    console = Console(file=sys.stderr)
    problem = _check_runnable(cfg, args.campaign, args)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.realtime:
        from engine.pbx.base import PbxAuthError

        try:
            summary = asyncio.run(_run_campaign(cfg, args, console))
        except (PbxAuthError, BaseExceptionGroup) as exc:
            refused = _first(exc, PbxAuthError)
            if refused is None:
                raise
            print(f"{args.campaign}: the PBX refused our login: {refused}", file=sys.stderr)
            return EXIT_FAILED
    else:
        from simulations.vloop import run_virtual

        summary = run_virtual(_run_campaign(cfg, args, console))
    _report(summary, args, Console())
    if summary.get("failed"):
        print(f"{args.campaign}: the run stopped itself: {summary['failed']}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _report(summary: dict[str, Any], args: argparse.Namespace, console: Console) -> None:
    if getattr(args, "json", False):
        print(json.dumps(summary, default=str))
        return
    print_summary([summary], console)
    for kind, path in summary.get("results", {}).items():
        console.print(f"results ({kind}): {path}", highlight=False)


# -- dialer simulate ----------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulations.runner import simulate

    cfg = _load(args.scenario)
    if cfg.simulation is None:
        print(f"{args.scenario}: no [simulation] section: a scenario needs one", file=sys.stderr)
        return EXIT_BAD_INPUT
    modes = args.compare.split(",") if args.compare else [args.mode or cfg.campaign.mode]
    unknown = [m for m in modes if m not in _known_modes()]
    if unknown:
        print(f"unknown pacer(s): {', '.join(unknown)}; available: {', '.join(sorted(_known_modes()))}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    summaries = []
    for mode in modes:
        s = simulate(cfg, mode=mode, seed=args.seed)
        s.pop("after_drain", None)
        summaries.append(s)
    if args.json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], default=str))
    else:
        print_summary(summaries, Console())
    return EXIT_OK


# -- dialer report ----------------------------------------------------------------------


def cmd_report_results(args: argparse.Namespace) -> int:
    from engine.results_report import format_results_report, read_results, summarize_results

    cfg = _load(args.campaign)
    report = summarize_results(read_results(args.results), cfg)
    if args.chart:
        from engine.results_report import write_chart

        try:
            write_chart(report, args.chart, f"campaign {cfg.id}: {Path(args.results).name}")
        except RuntimeError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FAILED
        print(f"chart: {args.chart}", file=sys.stderr)
    print(json.dumps(report) if args.json else format_results_report(report))
    return EXIT_OK


# -- dialer plugins -----------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    """Every loaded plugin with where it came from and the hooks it implements, then the pacers."""
    from engine.pacing import available_pacers
    from engine.plugins import make_plugin_manager

    modules = _load(args.campaign).campaign.plugins if args.campaign else []
    pm = make_plugin_manager(modules)
    origins = getattr(pm, "origins", {})
    print("plugins:")
    for name, plugin in pm.list_name_plugin():
        if name is None or plugin is None:
            continue
        hooks = []
        for caller in pm.get_hookcallers(plugin) or []:
            flags = [f for impl in caller.get_hookimpls() if impl.plugin is plugin
                     for f in ("tryfirst", "trylast", "wrapper", "hookwrapper") if getattr(impl, f, False)]
            hooks.append(caller.name + (f" ({', '.join(flags)})" if flags else ""))
        origin = origins.get(name)
        file = getattr(origin, "file", None) or getattr(plugin, "__file__", None)
        print(f"  {name}  ({origin if origin is not None else 'code'})")
        if file:
            print(f"    file: {file}")
        print(f"    hooks: {', '.join(sorted(hooks)) or '-'}")
    print("pacers:")
    for name, factory in sorted(available_pacers().items()):
        if hasattr(factory, "value"):
            dist = getattr(factory, "dist", None)
            where = f"entry point dialer.pacers: {name} = {factory.value}"
            where += f", distribution {dist.name} {dist.version}" if dist is not None else ""
        else:
            where = f"built in: {factory.__module__}.{factory.__qualname__}"
        print(f"  {name}  ({where})")
    return EXIT_OK


def cmd_report_compliance(args: argparse.Namespace) -> int:
    """Abandon rates per regulatory window and blocked dials by rule, read from the campaign's store."""
    from engine.report import compliance_report, format_compliance_report

    cfg = _load(args.campaign)
    if cfg.campaign.store == "memory":
        print(f"{args.campaign}: campaign.store is \"memory\": its figures lived in the run's process; read the "
              "*-compliance.txt file `dialer run` wrote next to its results", file=sys.stderr)
        return EXIT_BAD_INPUT
    windows = sorted({float(w) for w in args.window}) if args.window else _windows(cfg)

    async def read() -> dict[str, Any]:
        store = _build_store(cfg)
        try:
            return await compliance_report(store, cfg.id, now=args.at if args.at is not None else time.time(),
                                           windows=windows)
        finally:
            await store.close()

    from engine.store.base import StoreUnavailable

    try:
        report = asyncio.run(read())
    except StoreUnavailable as exc:
        print(f"{args.campaign}: store unreachable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(report) if args.json else format_compliance_report(report), end="" if not args.json else "\n")
    return EXIT_OK


# -- dialer store ---------------------------------------------------------------------------


def _shared_store(args: argparse.Namespace) -> tuple[CampaignConfig, Any] | int:
    """The campaign's Redis store, or an exit code when it has none (or runs on development keys)."""
    cfg = _load(args.campaign)
    if cfg.campaign.store == "memory":
        print(f"{args.campaign}: campaign.store is \"memory\": nothing outlives a run there; this command "
              "works on a shared (Redis) store", file=sys.stderr)
        return EXIT_BAD_INPUT
    keys = _development_keys(cfg)
    if keys:
        print(f"{args.campaign}: {keys}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return cfg, _build_store(cfg)


def _closing(store: Any, work: Callable[[], Awaitable[T]]) -> T:
    """Run one operation on ``store`` to its end on a fresh loop, and close the store whatever happens
    (a connection pool left open would hold the process's sockets until exit)."""

    async def go() -> T:
        try:
            return await work()
        finally:
            await store.close()

    return asyncio.run(go())


def cmd_store_dnc_load(args: argparse.Namespace) -> int:
    """Bulk-load a DNC file into the global list (every campaign, every node) or the campaign's own."""
    opened = _shared_store(args)
    if isinstance(opened, int):
        return opened
    cfg, store = opened
    if not Path(args.file).is_file():
        print(f"{args.file}: file not found", file=sys.stderr)
        return EXIT_BAD_INPUT

    added = _closing(store, lambda: store.load_dnc_file(args.file, cfg.id if args.campaign_list else None))
    where = f"campaign {cfg.id}'s DNC list" if args.campaign_list else "the global DNC list (every campaign)"
    print(f"{args.file}: {added} numbers added to {where}")
    return EXIT_OK


def cmd_store_reencrypt(args: argparse.Namespace) -> int:
    """Key rotation, step 2 (engine/crypto.py): rewrite every lead record not under the current data key."""
    opened = _shared_store(args)
    if isinstance(opened, int):
        return opened
    cfg, store = opened

    rewritten = _closing(store, lambda: store.reencrypt(cfg.id))
    print(f"campaign {cfg.id}: {rewritten} lead records re-encrypted under the current key")
    return EXIT_OK


def cmd_store_calls(args: argparse.Namespace) -> int:
    """Calls reserved and not finished, per node, with when their number locks lapse: a node that died
    leaves its calls here (their numbers locked, their leads held) until then."""
    opened = _shared_store(args)
    if isinstance(opened, int):
        return opened
    cfg, store = opened

    calls: dict[str, list[float]] = _closing(store, lambda: store.calls_in_progress(cfg.id))
    if args.json:
        print(json.dumps({node: {"calls": len(locks), "locks_lapse": locks} for node, locks in calls.items()}))
        return EXIT_OK
    if not calls:
        print(f"campaign {cfg.id}: no call in progress")
    for node, locks in calls.items():
        first, last = (time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(x)) for x in (locks[0], locks[-1]))
        print(f"campaign {cfg.id}: node {node}: {len(locks)} calls in progress; their number locks lapse "
              f"from {first} to {last}")
    if calls:
        print("A node that is not running any more: its calls are recorded once as unknown and their leads "
              "come back when the locks lapse (docs/operations.md, \"If a node dies\"); nothing to do.")
    return EXIT_OK


def cmd_store_migrate(args: argparse.Namespace) -> int:
    """Convert a store written under an older key layout (engine/store/redis.py, "Layout versions")."""
    opened = _shared_store(args)
    if isinstance(opened, int):
        return opened
    _, store = opened

    report = _closing(store, lambda: store.migrate_layout(dry_run=args.dry_run))
    print(f"{args.campaign}: redis {store.prefix!r}: {report.summary()}")
    return EXIT_OK


# -- dialer pbx-emulator ------------------------------------------------------------------


def cmd_pbx_emulator(args: argparse.Namespace) -> int:
    from simulations import ami_emulator

    return int(ami_emulator.main(args.rest) or 0)


# -- dialer flood -------------------------------------------------------------------------


def cmd_flood(args: argparse.Namespace) -> int:
    """Flood one engine process from AMI emulator processes; exit 1 if counts differ on the two sides."""
    from simulations import flood

    return flood.run_from_args(args)


# -- entry --------------------------------------------------------------------------------


def _duration_arg(text: str) -> float:
    from engine.compliance_config import parse_seconds

    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dialer", description="Outbound dialer engine: run campaigns, simulate "
                                "pacing, check configurations.")
    p.add_argument("--log-level", default="warning", help="debug, info, warning or error (default: warning)")
    p.add_argument("--log-json", action="store_true", help="JSON log lines even in a terminal")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a campaign to the end and print its KPIs",
                       description="Run a campaign. With backend \"sim\" the PBX, customers and agents are "
                       "simulated (virtual time unless --realtime). Shows live figures on stderr; writes "
                       "one result row per attempt (CSV/JSONL) and prints the KPI summary. SIGINT/SIGTERM "
                       "stop dialling, let calls in flight finish and record the rest as interrupted.")
    r.add_argument("campaign", help="campaign TOML file")
    r.add_argument("--leads", help="CSV with a 'phone' column (optional: lead_id, tier, score, timezone, tags, "
                   "consent_source); without it, [simulation] leads are generated (with store \"redis\" only when "
                   "[simulation] leads is set: a shared store holds the campaign's imported leads)")
    r.add_argument("--results", help="directory for the results files (default: [results] dir)")
    r.add_argument("--realtime", action="store_true", help="run the simulated PBX at wall-clock speed")
    r.add_argument("--until", type=float, help="stop after this many seconds (loop time)")
    r.add_argument("--node-id", default="node-1", help="this engine node's id (several nodes share a Redis store)")
    r.add_argument("--quiet", action="store_true", help="no live status")
    r.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    r.add_argument("--metrics-addr", default="127.0.0.1", help="address for the metrics (default: 127.0.0.1)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("simulate", help="run a scenario in virtual time and print KPIs",
                       description="Run the real engine on simulated customers and agents in virtual time "
                       "and print occupancy, talk minutes per agent hour, abandon rate, calls and contacts.")
    s.add_argument("scenario", help="scenario TOML file (a campaign with a [simulation] section)")
    s.add_argument("--mode", help="pacer to use instead of campaign.mode")
    s.add_argument("--compare", help="comma-separated pacers to run on the same scenario and seed, "
                   "e.g. progressive,predictive")
    s.add_argument("--seed", type=int, help="random seed (default: [simulation] seed)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_simulate)

    c = sub.add_parser("check", help="validate a campaign file", description="Validate a campaign file and "
                       "its plugins; prints every problem with file, line, key and reason.")
    c.add_argument("campaign")
    c.set_defaults(func=cmd_check)

    pl = sub.add_parser("plugins", help="list plugins, the hooks each implements, and pacers")
    pl.add_argument("--campaign", help="also load the plugins this campaign names")
    pl.set_defaults(func=cmd_plugins)

    ld = sub.add_parser("leads", help="lead management (import)")
    ld_sub = ld.add_subparsers(dest="leads_command", required=True, metavar="ACTION")
    li = ld_sub.add_parser("import", help="import and clean a CSV or JSONL lead file into a campaign's store",
                           description="Normalise numbers to E.164, merge duplicates by number, reject bad rows "
                           "(written to a reject report: line, field, value, reason). A file that cannot be read "
                           "as a whole is refused and nothing is imported. Re-importing updates, never "
                           "duplicates.")
    li.add_argument("file", help="CSV (header row with a phone column) or JSONL (one object per line)")
    li.add_argument("--campaign", required=True, help="campaign TOML file (gives the store and default region)")
    li.add_argument("--region", help="default region for numbers without a country code (default: campaign's)")
    li.add_argument("--rejects", help="where to write the reject report (default: FILE.rejects.csv)")
    li.add_argument("--output", help="also write the cleaned leads as JSONL (usable with `dialer run --leads`)")
    li.set_defaults(func=cmd_leads_import)

    st = sub.add_parser("store", help="a shared (Redis) store: DNC lists, key rotation, layout migration")
    st_sub = st.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    sd = st_sub.add_parser("dnc-load", help="bulk-load a do-not-call file",
                           description="Load a DNC file (one E.164 number per line; blank lines and # comments "
                           "skipped; other lines counted and warned about) into the global list, which every "
                           "campaign and node checks atomically before each dial, or into the campaign's own.")
    sd.add_argument("file")
    sd.add_argument("--campaign", required=True, help="campaign TOML file (gives the store)")
    sd.add_argument("--campaign-list", action="store_true", help="the campaign's own list instead of the global")
    sd.set_defaults(func=cmd_store_dnc_load)
    se = st_sub.add_parser("reencrypt", help="re-encrypt lead records under the current data key",
                           description="Key rotation, step 2: after putting the new key first in DIALER_DATA_KEY "
                           "(new,old) and restarting the nodes, rewrite every lead record still under an old key; "
                           "then the old key can be dropped.")
    se.add_argument("campaign", help="campaign TOML file")
    se.set_defaults(func=cmd_store_reencrypt)
    sc = st_sub.add_parser("calls", help="calls in progress per node, and when their number locks lapse",
                           description="List, per node, the campaign's calls reserved and not finished, with "
                           "when their number locks lapse: a node that died holds its calls' leads and numbers "
                           "until then (the PBX may still carry the calls). Read-only.")
    sc.add_argument("campaign", help="campaign TOML file")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_store_calls)
    sm = st_sub.add_parser("migrate", help="convert a store written under an older key layout",
                           description="Convert the DNC and invalid-number sets, the per-number keys and the "
                           "campaigns' ready queues (one per tier, now one per tier and time zone) written "
                           "under an older key layout (nodes refuse to dial until this is done). Stop every node "
                           "first. Crash-safe and re-runnable: run it again after an interruption; on a current "
                           "store it does nothing.")
    sm.add_argument("campaign", help="campaign TOML file (gives the store; the whole deployment is converted)")
    sm.add_argument("--dry-run", action="store_true", help="report what would be converted, write nothing")
    sm.set_defaults(func=cmd_store_migrate)

    rp = sub.add_parser("report", help="reports on a campaign (results, compliance)")
    rp_sub = rp.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    rr = rp_sub.add_parser("results", help="contacts by tier and customer type, conversion, follow-ups, hour by hour",
                           description="Summarise a results file written by `dialer run`.")
    rr.add_argument("campaign", help="campaign TOML file (its dispositions say what a conversion is)")
    rr.add_argument("results", help="results CSV or JSONL written by `dialer run`")
    rr.add_argument("--chart", metavar="FILE.png", help="also draw the day: dials and contacts per hour, the "
                    "abandon rate so far against the target")
    rr.add_argument("--json", action="store_true")
    rr.set_defaults(func=cmd_report_results)
    rc = rp_sub.add_parser("compliance", help="abandon rate per regulatory window, blocked dials by rule",
                           description="Read a campaign's store (Redis) and print, per window (the campaign's "
                           "[abandon] windows and 24 h), dials, live answers, abandons, the abandon rate and the "
                           "dials the gate refused, by rule.")
    rc.add_argument("campaign", help="campaign TOML file (its store and windows)")
    rc.add_argument("--window", action="append", type=_duration_arg, help="a window such as 24h or 30d "
                    "(repeatable; default: the campaign's)")
    rc.add_argument("--at", type=float, help="end of the windows, POSIX seconds (default: now)")
    rc.add_argument("--json", action="store_true")
    rc.set_defaults(func=cmd_report_compliance)

    e = sub.add_parser("pbx-emulator", help="start the AMI-speaking PBX emulator (see its --help)",
                       add_help=False)
    e.add_argument("rest", nargs=argparse.REMAINDER)
    e.set_defaults(func=cmd_pbx_emulator)

    from simulations import flood

    fl = sub.add_parser("flood", help="flood the engine with calls from AMI emulator processes",
                        description=flood.DESCRIPTION)
    flood.add_arguments(fl)
    fl.set_defaults(func=cmd_flood)
    return p


def _emulator_at(argv: list[str]) -> int | None:
    """Where ``pbx-emulator`` stands as the command (after global options only), or None."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "pbx-emulator":
            return i
        if token == "--log-level":
            i += 2
        elif token == "--log-json" or token.startswith("--log-level="):
            i += 1
        else:
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    at = _emulator_at(argv)
    if at is not None:  # its own parser: every option after the command goes through untouched
        head = build_parser().parse_args([*argv[:at], "check", "-"])  # the global options before it
        logs.configure(head.log_level, json=True if head.log_json else None)
        from simulations import ami_emulator

        return int(ami_emulator.main(argv[at + 1:]) or 0)
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, json=True if args.log_json else None)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        from engine.leads import LeadFileError
        from engine.plugins import PluginError

        if isinstance(exc, LeadFileError | PluginError):
            print(str(exc), file=sys.stderr)
            return EXIT_BAD_INPUT
        if type(exc).__name__ == "StoreLayoutError":  # engine.store.redis, imported only with a Redis store
            print(f"{getattr(args, 'campaign', '')}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
