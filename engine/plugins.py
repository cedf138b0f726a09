"""Loading plugins and calling hooks with the engine's rules (fail closed, await maybe)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

import pluggy
import structlog

from engine import hooks
from engine.models import Alert, Veto

ENTRY_POINT_GROUP = "dialer.plugins"
log = structlog.get_logger("engine.plugins")


class PluginError(Exception):
    """A plugin could not be loaded or does not fit the hook specifications."""


def make_plugin_manager(modules: Iterable[str] = (), *, entry_points_too: bool = True,
                        extra: Iterable[object] = ()) -> pluggy.PluginManager:
    """A manager with the specs, the installed entry-point plugins and ``modules`` (dotted names)."""
    pm = pluggy.PluginManager(hooks.PROJECT)
    pm.add_hookspecs(hooks)
    if entry_points_too:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin {ep.name!r} (entry point {ep.value}, group {ENTRY_POINT_GROUP}) "
                                  f"failed to import: {exc}") from exc
            _register(pm, plugin, ep.name, f"entry point {ep.value}")
    for name in modules:
        if pm.get_plugin(name) is not None:
            continue
        try:
            plugin = importlib.import_module(name)
        except Exception as exc:
            raise PluginError(f"plugin {name!r} named in the campaign failed to import: {exc}") from exc
        _register(pm, plugin, name, "campaign config")
    for obj in extra:
        _register(pm, obj, None, "code")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin = getattr(exc, "plugin", None)
        label = pm.get_name(plugin) if plugin is not None else "?"
        raise PluginError(f"plugin {label!r} implements a hook that does not exist: {exc}") from exc
    return pm


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None, origin: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        label = name or type(plugin).__name__
        raise PluginError(f"plugin {label!r} ({origin}) does not fit the hook specs: {exc}") from exc
    except ValueError as exc:
        raise PluginError(f"plugin {name!r} ({origin}) could not be registered: {exc}") from exc


async def await_maybe(value: Any) -> Any:
    """A hook result, awaited if the plugin returned an awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


async def rank_leads(pm: pluggy.PluginManager, campaign: Any, leads: Iterable[Any]) -> None:
    """Set each lead's tier and add every ranking plugin's adjustment to its score, before storing."""
    tier_hook, hook = pm.hook.dialer_lead_tier, pm.hook.dialer_rank_lead
    if not tier_hook.get_hookimpls() and not hook.get_hookimpls():
        return
    for lead in leads:
        tier = tier_hook(lead=lead, campaign=campaign)
        if tier is not None:
            lead.tier = int(tier)
        total = 0.0
        for r in hook(lead=lead, campaign=campaign):
            r = await await_maybe(r)
            if r is not None:
                total += float(r)
        lead.score += total


class Gate:
    """The pre-dial pipeline: compliance veto (fail closed), then risk alerts."""

    def __init__(self, pm: pluggy.PluginManager, campaign: Any, timeout: float = 2.0) -> None:
        self._hook = pm.hook
        self._campaign = campaign
        self._timeout = timeout
        self._has_checks = bool(pm.hook.dialer_check_dial.get_hookimpls())
        self._has_alerts = bool(pm.hook.dialer_risk_alerts.get_hookimpls())

    async def check(self, ctx: Any) -> Veto | None:
        if not self._has_checks:
            return None
        try:
            results = self._hook.dialer_check_dial(ctx=ctx, campaign=self._campaign)
        except Exception as exc:
            log.error("compliance plugin raised; dial blocked", error=repr(exc), exc_info=True,
                      lead_id=ctx.lead.lead_id)
            return Veto("plugin_error", f"compliance plugin raised {type(exc).__name__}: {exc}")
        for r in results:
            try:
                if inspect.isawaitable(r):
                    async with asyncio.timeout(self._timeout):
                        r = await r
            except Exception as exc:
                log.error("compliance plugin failed; dial blocked", error=repr(exc), lead_id=ctx.lead.lead_id)
                return Veto("plugin_error", f"compliance plugin failed: {type(exc).__name__}: {exc}")
            if r is None:
                continue
            if not isinstance(r, Veto):
                return Veto("plugin_error", f"compliance plugin returned {type(r).__name__}, not a Veto or None")
            return r
        return None

    async def alerts(self, ctx: Any) -> tuple[Alert, ...]:
        if not self._has_alerts:
            return ()
        out: list[Alert] = []
        try:
            results = self._hook.dialer_risk_alerts(ctx=ctx, campaign=self._campaign)
        except Exception as exc:
            log.error("risk plugin raised; alerts lost for this call", error=repr(exc), lead_id=ctx.lead.lead_id)
            return ()
        for r in results:
            try:
                r = await await_maybe(r)
            except Exception as exc:
                log.error("risk plugin failed", error=repr(exc), lead_id=ctx.lead.lead_id)
                continue
            if r:
                out.extend(a for a in r if isinstance(a, Alert))
        return tuple(out)
