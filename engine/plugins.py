"""Loading plugins and calling hooks with the engine's rules (fail closed, await maybe)."""

from __future__ import annotations

import asyncio
import difflib
import importlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from operator import itemgetter
from typing import Any

import pluggy
import structlog

try:  # pluggy's own call loop: FastHook stands in for it only while it is the one in use
    from pluggy._callers import _multicall
except ImportError:  # pragma: no cover - another pluggy: every hook call goes through pluggy
    _multicall = None

from engine import hooks
from engine.models import Alert, Veto

ENTRY_POINT_GROUP = "dialer.plugins"
log = structlog.get_logger("engine.plugins")


class PluginError(Exception):
    """A plugin could not be loaded or does not fit the hook specifications."""


@dataclass(frozen=True)
class PluginOrigin:
    """Where a loaded plugin came from: shown by ``dialer plugins`` and in every loading error."""

    source: str  # "entry point" | "campaign config" | "code"
    entry_point: str | None = None  # "name = module[:attr]" in the dialer.plugins group
    distribution: str | None = None  # "name version" of the installed package
    file: str | None = None  # the module's file

    def __str__(self) -> str:
        if self.source == "entry point":
            where = f"entry point {ENTRY_POINT_GROUP}: {self.entry_point}"
            return f"{where}, distribution {self.distribution}" if self.distribution else where
        return f"{self.source}, {self.file}" if self.file else self.source


class DialerPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each plugin came from (``origins``, by plugin name)."""

    def __init__(self) -> None:
        super().__init__(hooks.PROJECT)
        self.origins: dict[str, PluginOrigin] = {}


def _file_of(plugin: object) -> str | None:
    module = plugin if inspect.ismodule(plugin) else inspect.getmodule(type(plugin))
    return getattr(module, "__file__", None)


def make_plugin_manager(modules: Iterable[str] = (), *, entry_points_too: bool = True,
                        extra: Iterable[object] = ()) -> DialerPluginManager:
    """A manager with the specs, the installed entry-point plugins and ``modules`` (dotted names).

    Every error names the plugin and where it came from (entry point and distribution, campaign
    config, or code): a plugin that fails to import, implements a hook that does not exist, or
    takes an argument its hook does not have is refused, and so is the whole manager.
    """
    pm = DialerPluginManager()
    pm.add_hookspecs(hooks)
    if entry_points_too:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            dist = getattr(ep, "dist", None)
            origin = PluginOrigin("entry point", f"{ep.name} = {ep.value}",
                                  f"{dist.name} {dist.version}" if dist is not None else None)
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin {ep.name!r} ({origin}) failed to import: "
                                  f"{type(exc).__name__}: {exc}") from exc
            _register(pm, plugin, ep.name, PluginOrigin(**{**origin.__dict__, "file": _file_of(plugin)}))
    for name in modules:
        if pm.get_plugin(name) is not None:
            continue
        try:
            plugin = importlib.import_module(name)
        except Exception as exc:
            raise PluginError(f"plugin {name!r} named in the campaign (campaign.plugins) failed to import: "
                              f"{type(exc).__name__}: {exc}; it must be an importable module or the name of "
                              f"an installed {ENTRY_POINT_GROUP} entry point") from exc
        if pm.is_registered(plugin):
            continue  # the same module is installed as an entry point too: loaded once
        _register(pm, plugin, name, PluginOrigin("campaign config", file=_file_of(plugin)))
    for obj in extra:
        _register(pm, obj, None, PluginOrigin("code", file=_file_of(obj)))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin = getattr(exc, "plugin", None)
        name = pm.get_name(plugin) if plugin is not None else None
        unknown = [h for h in dir(plugin) if h.startswith(f"{hooks.PROJECT}_")
                   and getattr(pm.hook, h, None) is not None and not pm.hook.__dict__[h].has_spec()]
        hint = "".join(f"; did you mean {m[0]}?" for h in unknown
                       if (m := difflib.get_close_matches(h, _spec_names(), n=1)))
        raise PluginError(f"plugin {_label(pm, name, plugin)} implements a hook that does not exist: "
                          f"{', '.join(unknown) or exc}{hint} (the hooks are: {', '.join(_spec_names())})") from exc
    return pm


def _spec_names() -> list[str]:
    return sorted(n for n in dir(hooks) if n.startswith(f"{hooks.PROJECT}_"))


def _label(pm: DialerPluginManager, name: str | None, plugin: object) -> str:
    origin = pm.origins.get(name or "")
    shown = name if name and origin is not None and origin.source != "code" else _code_name(plugin)
    return f"{shown!r} ({origin})" if origin is not None else repr(shown)


def _code_name(plugin: object) -> str:
    return plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__qualname__


def _register(pm: DialerPluginManager, plugin: object, name: str | None, origin: PluginOrigin) -> None:
    try:
        registered = pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        label = f"{name or _code_name(plugin)!r} ({origin})"
        detail = str(exc).replace(f"Plugin {pm.get_canonical_name(plugin)!r}", f"Plugin {name or _code_name(plugin)!r}")
        raise PluginError(f"plugin {label} does not fit the hook specs: {detail}") from exc
    except ValueError as exc:
        raise PluginError(f"plugin {name or _code_name(plugin)!r} ({origin}) could not be registered: {exc}") from exc
    if registered is not None:
        pm.origins[registered] = origin


async def await_maybe(value: Any) -> Any:
    """A hook result, awaited if the plugin returned an awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


def retier(pm: pluggy.PluginManager, campaign: Any, lead: Any) -> bool:
    """The lead's tier from the tier rules again, after its tags or attributes changed during a call
    (an agent's tags, a disposition's), so that the next claim routes it by what was learnt; its score
    is kept (``rank_leads`` adds to a score, it does not recompute one). True when the tier moved."""
    hook = pm.hook.dialer_lead_tier
    if not hook.get_hookimpls():
        return False
    tier = hook(lead=lead, campaign=campaign)
    if tier is None or int(tier) == lead.tier:
        return False
    lead.tier = int(tier)
    return True


async def rank_leads(pm: pluggy.PluginManager, campaign: Any, leads: Iterable[Any]) -> None:
    """Set each lead's tier and add every ranking plugin's adjustment to its score, before storing."""
    if not pm.hook.dialer_lead_tier.get_hookimpls() and not pm.hook.dialer_rank_lead.get_hookimpls():
        return
    # Called for every lead of the list (tens of thousands): through ``FastHook``, pluggy's results for less.
    tier_hook, hook = FastHook(pm, "dialer_lead_tier"), FastHook(pm, "dialer_rank_lead")
    for lead in leads:
        tier = tier_hook(lead=lead, campaign=campaign)
        if tier is not None:
            lead.tier = int(tier)
        total = 0.0
        for r in hook(lead=lead, campaign=campaign):
            if inspect.isawaitable(r):
                r = await r
            if r is not None:
                total += float(r)
        lead.score += total


class FastHook:
    """One hook, called per dial: the same results as ``pm.hook.<name>(**kwargs)``, for less.

    pluggy re-applies spec defaults, re-checks the arguments and copies the implementation list on
    every call; here the implementations (last registered first, as pluggy calls them) are looked at
    once and called directly, ``None`` results dropped (the first result alone for ``firstresult``
    hooks). Whenever that would not be exactly pluggy's behaviour (a wrapper is registered, hook
    tracing or monitoring is on, an implementation takes keyword-only arguments) or the registered
    implementations changed, the call goes through pluggy itself.
    """

    __slots__ = ("_caller", "_firstresult", "_name", "_plan", "_pm", "_seen")

    def __init__(self, pm: pluggy.PluginManager, name: str) -> None:
        self._pm, self._name = pm, name
        self._caller = getattr(pm.hook, name, None)  # None: no spec and no implementation (yet)
        spec = getattr(self._caller, "spec", None)
        self._firstresult = bool(spec.opts.get("firstresult", False)) if spec is not None else False
        self._seen: list[Any] | None = None
        self._plan: list[tuple[Any, Any]] | None = None

    def _current_plan(self) -> list[tuple[Any, Any]] | None:
        impls = getattr(self._caller, "_hookimpls", None)
        if impls is None or _multicall is None or getattr(self._pm, "_inner_hookexec", None) is not _multicall:
            return None
        if impls != self._seen:
            self._seen = list(impls)
            plain = all(not (i.hookwrapper or i.wrapper or i.kwargnames) for i in impls)
            self._plan = [(i.function, _arguments(tuple(i.argnames))) for i in reversed(impls)] if plain else None
        return self._plan

    def __call__(self, **kwargs: Any) -> Any:
        # A plan is only ever made with pluggy's own call loop in place (``_current_plan``); it stands while
        # that loop and the registered implementations do. (Four hooks a dial: the checks are kept few.)
        plan = self._plan
        if plan is None or self._caller._hookimpls != self._seen or self._pm._inner_hookexec is not _multicall:
            plan = self._current_plan()
            if plan is None:
                caller = self._caller
                return (caller if caller is not None else getattr(self._pm.hook, self._name))(**kwargs)
        if self._firstresult:
            for function, arguments in plan:
                r = function(*arguments(kwargs))
                if r is not None:
                    return r
            return None
        results = []
        for function, arguments in plan:
            r = function(*arguments(kwargs))
            if r is not None:
                results.append(r)
        return results


def _arguments(argnames: tuple[str, ...]) -> Any:
    """What takes an implementation's positional arguments out of the call's keyword arguments, as a
    tuple, in C (``itemgetter``; a missing one is a ``KeyError``, as before)."""
    if len(argnames) >= 2:
        return itemgetter(*argnames)
    if argnames:
        name = argnames[0]
        return lambda kwargs: (kwargs[name],)
    return lambda kwargs: ()


class Gate:
    """The pre-dial pipeline: compliance veto (fail closed), then risk alerts."""

    def __init__(self, pm: pluggy.PluginManager, campaign: Any, timeout: float = 2.0) -> None:
        self._check_dial = FastHook(pm, "dialer_check_dial")
        self._risk_alerts = FastHook(pm, "dialer_risk_alerts")
        self._campaign = campaign
        self._timeout = timeout
        self._has_checks = bool(pm.hook.dialer_check_dial.get_hookimpls())
        self._has_alerts = bool(pm.hook.dialer_risk_alerts.get_hookimpls())

    async def check(self, ctx: Any) -> Veto | None:
        if not self._has_checks:
            return None
        try:
            results = self._check_dial(ctx=ctx, campaign=self._campaign)
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
            results = self._risk_alerts(ctx=ctx, campaign=self._campaign)
        except Exception as exc:
            log.error("risk plugin raised; alerts lost for this call", error=repr(exc), lead_id=ctx.lead.lead_id)
            return ()
        for r in results:
            try:
                if inspect.isawaitable(r):
                    r = await r
            except Exception as exc:
                log.error("risk plugin failed", error=repr(exc), lead_id=ctx.lead.lead_id)
                continue
            if r:
                out.extend(a for a in r if isinstance(a, Alert))
        return tuple(out)


def settings_problems(pm: pluggy.PluginManager, campaign: Any) -> list[tuple[tuple[str, ...], str]]:
    """Problems with the campaign's ``[plugin.<name>]`` tables, as ``(key path, reason)``: a table
    that no loaded plugin owns, and whatever each plugin's ``dialer_check_settings`` reports. Each
    implementation is called on its own, so every problem is put under its plugin's table."""
    names = {name for name, plugin in pm.list_name_plugin() if plugin is not None}
    out: list[tuple[tuple[str, ...], str]] = []
    for name in sorted(set(campaign.plugin) - names):
        loaded = ", ".join(sorted(n for n in names if not n.isdigit())) or "none"
        out.append((("plugin", name), f"no loaded plugin is named {name!r} (loaded: {loaded})"))
    for impl in pm.hook.dialer_check_settings.get_hookimpls():
        name = impl.plugin_name
        try:
            found = impl.function(**{arg: campaign for arg in impl.argnames if arg == "campaign"}) or []
        except Exception as exc:
            found = [f"the settings check failed: {type(exc).__name__}: {exc}"]
        for problem in found:
            key, sep, reason = str(problem).partition(": ")
            simple = sep and key.replace("_", "").replace(".", "").isalnum()
            out.append((("plugin", name, *key.split(".")), reason) if simple else (("plugin", name), str(problem)))
    return out
