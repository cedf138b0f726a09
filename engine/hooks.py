"""The hook specifications: everything a dialer plugin can do, in one place.

Plugins are ordinary Python modules or packages with functions (or objects
with methods) marked ``@hookimpl`` and named like the specs below. They are
found through the ``dialer.plugins`` entry-point group and through a
campaign's ``campaign.plugins`` list. Hooks are called with keyword arguments
only; an implementation may accept any subset of a spec's arguments, so new
arguments never break old plugins.

Any hook may return an awaitable instead of a value: the engine awaits it (so
a plugin can do I/O), with the same meaning as a plain return value.

Ordering: implementations run last-registered first; ``@hookimpl(tryfirst=True)``
and ``trylast=True`` move one to the front or the back.

Compatibility promise: within a major version, specs only gain optional
arguments; a removed or renamed hook or argument is a major version bump.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from engine.config import CampaignConfig
    from engine.models import Alert, CallAttempt, CallResult, Lead, Outcome, Veto
    from engine.store.base import DialContext, Store

PROJECT = "dialer"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- campaign lifecycle ----------------------------------------------------------------


@hookspec
def dialer_campaign_start(campaign: CampaignConfig, store: Store) -> Awaitable[None] | None:
    """Called once when a campaign starts on this node, before the first dial.

    :param campaign: the validated campaign configuration.
    :param store: the campaign store, for plugins that keep their own state in it.
    :return: nothing (or an awaitable). An exception stops the campaign from starting.
    """


@hookspec
def dialer_check_settings(campaign: CampaignConfig) -> list[str] | None:
    """Called by ``dialer check`` and before a campaign starts, once the plugins are loaded.

    A plugin reads its own settings from ``campaign.plugin.get("<its name>", {})`` (the campaign
    file's ``[plugin.<name>]`` table) and checks them here, so that a typo stops the campaign
    before any dial instead of silently changing a rule.

    :param campaign: the campaign configuration.
    :return: the problems found, each a short sentence starting with the key it is about
        (``"max_24h: 'three' is not a whole number"``), or None. Any problem, or an exception,
        refuses the campaign (exit status 2) with the file, line and key named.
    """


@hookspec
def dialer_campaign_end(campaign: CampaignConfig, summary: dict[str, Any]) -> Awaitable[None] | None:
    """Called once when a campaign stops on this node, after every call has been recorded.

    :param campaign: the campaign configuration.
    :param summary: the KPI summary of this run (``engine.kpi.summarize``).
    """


# -- lead ranking ----------------------------------------------------------------------


@hookspec
def dialer_rank_lead(lead: Lead, campaign: CampaignConfig) -> float | Awaitable[float | None] | None:
    """Called for each lead as it is loaded into the store for a campaign run.

    :param lead: the lead, with its tags, attributes and attempt count.
    :param campaign: the campaign configuration.
    :return: an adjustment added to the lead's score (leads are dialled by tier,
        then highest score first), or None for no opinion. All results are summed.
    """


@hookspec(firstresult=True)
def dialer_lead_tier(lead: Lead, campaign: CampaignConfig) -> int | None:
    """Called for each lead as it is loaded into the store, before ``dialer_rank_lead``.

    :param lead: the lead as imported.
    :param campaign: the campaign configuration.
    :return: the lead's intent tier (0 = highest, dialled first; 9 = lowest), or
        None for no opinion. The first plugin with an opinion decides.
    """


@hookspec
def dialer_claim_order(campaign: CampaignConfig, now: float,
                       zones: Collection[str]) -> Mapping[str, float] | Awaitable[Mapping[str, float] | None] | None:
    """Called before claiming leads, at most about once a wall-clock minute per campaign and node (the
    answer is kept for the minute: claims are on the hot path), to reorder leads *within* a tier by
    their time zone, e.g. by how well each zone answers at its current local hour.

    :param campaign: the campaign configuration.
    :param now: wall-clock POSIX time (the engine's clock: virtual in simulations).
    :param zones: the time zones the campaign's leads are queued under: each lead's IANA zone as
        imported, ``""`` for leads with none (the campaign's zone stands for them).
    :return: a bonus per zone, added to the score of each of its leads for the claim (leads are
        claimed by tier, then highest score + bonus first; a zone left out gets 0), or None for no
        opinion. All results are summed per zone. Stored scores are not changed. An exception is
        logged and the claim goes on in plain score order.
    """


# -- the pre-dial gate -------------------------------------------------------------------


@hookspec
def dialer_check_dial(ctx: DialContext, campaign: CampaignConfig) -> Veto | Awaitable[Veto | None] | None:
    """Called before every dial, after the lead's context was loaded and before
    anything is dialled. This is the compliance gate. (Predictive and progressive
    dials are decided in bursts whose contexts and reservations are one round trip
    to the store: the attempt may already be reserved when this is called, and is
    given back whole when the call is refused. Preview calls are reserved after.)

    :param ctx: the lead and what the store knows about its number (attempts
        today and in 24 h, DNC, invalid, last abandon, earlier results), as it was
        before this attempt's reservation.
    :param campaign: the campaign configuration.
    :return: a ``Veto(rule, reason, retry_at)`` to block the dial, or None to allow
        it. Any veto blocks. An exception (or an awaitable that fails) blocks too:
        the gate fails closed, and the error is logged with the plugin's name.
    """


@hookspec
def dialer_risk_alerts(ctx: DialContext, campaign: CampaignConfig) -> list[Alert] | Awaitable[list[Alert]] | None:
    """Called before every dial that the gate allowed.

    :param ctx: the same context the gate saw.
    :param campaign: the campaign configuration.
    :return: alerts to show the agent before the call is connected (screen-pop),
        or None. All results are collected; a failing plugin's alerts are lost
        but the call goes on (alerts inform, they do not gate).
    """


# -- after the call ----------------------------------------------------------------------


@hookspec(firstresult=True)
def dialer_next_attempt(call: CallAttempt, outcome: Outcome, proposed: float,
                        campaign: CampaignConfig) -> float | None:
    """Called once per attempt that will be tried again, before the lead is rescheduled.

    :param call: the attempt that just ended (its lead, its wall-clock start).
    :param outcome: how it ended.
    :param proposed: wall-clock POSIX time of the next attempt from the retry rules.
    :param campaign: the campaign configuration.
    :return: a later time for the next attempt (e.g. the hour this list answers best), or None to
        keep ``proposed``. The first non-None result wins. A time before ``proposed`` is ignored
        (retry delays are rules, not suggestions), and the compliance gate still checks the dial
        when it comes due. An exception is logged and ``proposed`` stands.
    """


@hookspec
def dialer_after_call(call: CallAttempt, result: CallResult, campaign: CampaignConfig,
                      store: Store) -> Awaitable[None] | None:
    """Called once per attempt after its result was recorded and the lead rescheduled.

    :param call: the attempt, with its state history, agent and disposition.
    :param result: the row appended to the results.
    :param campaign: the campaign configuration.
    :param store: for follow-up actions (DNC on refusal, tags, follow-up tasks).
    :return: nothing (or an awaitable). Exceptions are logged; the result stands.
    """
