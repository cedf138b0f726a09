"""Turn AMI traffic into the engine's call events: a pure state machine.

The correlator takes AMI messages (plain ``Mapping[str, str]`` headers) and
returns the :mod:`engine.pbx.base` events they imply, keyed by *our* call id.
It imports no asyncio and reads no clock, so every captured Asterisk transcript
replays through it in a test, and a production surprise becomes a fixture.

How a call is recognised
    The backend originates with ``ChannelId``/``OtherChannelId`` derived from
    the call id, so the ``Uniqueid`` of every event on the customer leg *is*
    known before the first event arrives: no race with ``Newchannel``, no
    guessing from channel names. For a ``Local/`` originate, ``;1`` carries
    ``ChannelId`` (it runs our dialplan) and ``;2`` carries ``OtherChannelId``
    (it faces the customer). Transcripts taken without ``ChannelId`` are still
    understood: the first unclaimed ``Local/<dest>-XXXX;1`` matching a pending
    originate's channel claims it, and its ``;2`` follows by name.

What decides each event
    * Ringing: the first ``Newstate Ringing`` on one of the call's channels.
    * Answered: ``;1`` (or a single trunk channel) going ``Up``, or
      ``OriginateResponse`` Reason 4. With AMD on, the verdict is awaited:
      ``UserEvent AMDResult`` (Status) or ``VarSet AMDSTATUS``, whichever first;
      ``NOTSURE``/``HANGUP``/anything else is UNKNOWN (a live answer, fail safe).
    * Connected: the customer channel and an agent channel in the same bridge
      (``BridgeEnter``, in either order). The agent comes from the session
      registry, from the connect the engine asked for, or from the channel name.
    * Abandoned: the customer channel enters the abandon context
      (``Newexten``) or raises ``UserEvent DialerAbandon``.
    * OptOut: the customer channel raises ``UserEvent DialerOptOut`` (the
      person pressed 9 during the abandon message and the dialplan went on to
      ``dialer-optout``). Only the UserEvent counts, never a context name: it is
      raised after the digit was read, so it cannot fire for a person who merely
      heard the message.
    * Ended: every channel of the call has hung up *and* the cause is known.
      The true cause is on ``;2`` (``;1`` often says 0). ``OriginateResponse``
      arrives before, between or after the two ``Hangup`` events depending on
      the outcome (busy: before; no answer: between; cancel: after), so nothing
      here depends on that order: when the hangups carry no cause, the end waits
      for the response's Reason (5 busy, 8 congestion, 3 ring timeout, 0 failed).

Each call yields at most one of each event, in the order Ringing, Answered,
Connected/Abandoned, OptOut, Ended, and nothing after Ended.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.models import Q850, AnswerKind
from engine.pbx.base import Abandoned, Answered, CallEvent, Connected, Ended, OptOut, Ringing

# OriginateResponse Reason (Asterisk's AST_CONTROL_* outcome of the dial) -> Q.850 cause.
REASON_CAUSE: dict[int, int] = {
    1: int(Q850.NORMAL_CLEARING),  # hung up before answer
    3: int(Q850.NO_ANSWER),  # ring timeout (Originate Timeout)
    5: int(Q850.USER_BUSY),
    8: int(Q850.CONGESTION),
}
REASON_ANSWERED = 4

DEFAULT_AGENT_CHANNEL_RE = r"^(?:Local/(?P<local>[^@;/]+)@[^-;]*agent[^-;]*-|PJSIP/agent-(?P<sip>[^-;]+)-)"


def reason_word(cause: int, answered: bool) -> str:
    """The plain word the engine's ``Ended.reason`` carries for a Q.850 cause."""
    if cause == Q850.USER_BUSY:
        return "busy"
    if cause in (Q850.NO_ANSWER, Q850.NO_USER_RESPONSE):
        return "no_answer"
    if cause in (Q850.CONGESTION, Q850.SWITCH_CONGESTION):
        return "congestion"
    if cause in (Q850.UNALLOCATED, Q850.NUMBER_CHANGED, Q850.INVALID_NUMBER_FORMAT):
        return "invalid"
    if cause == Q850.CALL_REJECTED:
        return "rejected"
    if answered or cause == Q850.NORMAL_CLEARING:
        return "normal"
    return "failed"


def amd_kind(status: str) -> AnswerKind:
    """AMD's ``AMDSTATUS`` as an answer kind; anything but HUMAN/MACHINE counts as unknown (live)."""
    s = status.strip().upper()
    if s == "HUMAN":
        return AnswerKind.HUMAN
    if s == "MACHINE":
        return AnswerKind.MACHINE
    return AnswerKind.UNKNOWN


@dataclass(slots=True)
class _Chan:
    uid: str
    half: int  # 1 = runs our dialplan (customer leg as seen by the PBX), 2 = faces the customer, 0 = single
    name: str = ""
    alive: bool = True
    cause: int = 0
    state: str = ""


@dataclass(slots=True)
class _Call:
    call_id: str
    action_id: str
    channel: str  # the Channel of the Originate, for name-based claiming
    channel_id: str | None
    other_channel_id: str | None
    amd: bool
    chans: dict[str, _Chan] = field(default_factory=dict)
    reason: int | None = None  # OriginateResponse Reason, once seen
    ringing: bool = False
    answered: bool = False
    answer_sent: bool = False
    connected: bool = False
    abandoned: bool = False
    opted_out: bool = False
    pending_agent: str | None = None

    @property
    def customer(self) -> _Chan | None:
        """The channel that executes our dialplan: the one to bridge, redirect or hang up."""
        for c in self.chans.values():
            if c.half in (0, 1):
                return c
        return None


# The only events that can change a call's state; everything else is skipped on its name.
_DECIDING = frozenset({"OriginateResponse", "BridgeEnter", "BridgeLeave", "BridgeDestroy", "Newchannel", "Newstate",
                       "Hangup", "VarSet", "UserEvent", "Newexten"})


class Correlator:
    """AMI messages in, call events out. One instance per AMI connection (per Asterisk server)."""

    def __init__(self, *, abandon_context: str = "dialer-abandon",
                 agent_channel_re: str | None = DEFAULT_AGENT_CHANNEL_RE) -> None:
        self.abandon_context = abandon_context
        self._abandon_marker = f"Context: {abandon_context}"
        self._agent_re = re.compile(agent_channel_re) if agent_channel_re else None
        self._calls: dict[str, _Call] = {}
        self._by_uid: dict[str, _Call] = {}
        self._by_action: dict[str, _Call] = {}
        self._unclaimed: list[_Call] = []  # originates without ChannelId, waiting for their ;1
        self._claimed_base: dict[str, _Call] = {}  # "Local/x@ctx-0000000a" of a claimed ;1 -> its call
        self._agents: dict[str, str] = {}  # agent session channel uniqueid -> agent id
        self._bridges: dict[str, dict[str, str]] = {}  # bridge id -> {uniqueid: channel name}

    # -- what the backend tells us -----------------------------------------------------

    def register(self, call_id: str, *, action_id: str, channel: str, channel_id: str | None = None,
                 other_channel_id: str | None = None, amd: bool = False) -> None:
        """Expect the events of an Originate about to be sent (register *before* sending)."""
        call = _Call(call_id, action_id, _dial_base(channel), channel_id, other_channel_id, amd)
        self._calls[call_id] = call
        self._by_action[action_id] = call
        if channel_id:
            self._by_uid[channel_id] = call
            if other_channel_id:
                self._by_uid[other_channel_id] = call
        else:
            self._unclaimed.append(call)

    def forget(self, call_id: str) -> None:
        """Drop a call without an event (its Originate was refused; the caller reports the failure)."""
        call = self._calls.pop(call_id, None)
        if call is not None:
            self._drop(call)

    def expect_connect(self, call_id: str, agent_id: str) -> None:
        """The engine asked to bridge this call to ``agent_id``: the next bridge it enters is that agent."""
        call = self._calls.get(call_id)
        if call is not None:
            call.pending_agent = agent_id

    def register_agent(self, agent_id: str, uniqueid: str) -> None:
        """An agent session channel (originated with ``ChannelId`` = ``uniqueid``)."""
        self._agents[uniqueid] = agent_id

    def unregister_agent(self, uniqueid: str) -> None:
        """The agent session channel is gone; a later channel with that id is no agent of ours."""
        self._agents.pop(uniqueid, None)

    def in_flight(self) -> list[str]:
        """Call ids not ended yet."""
        return list(self._calls)

    def __len__(self) -> int:
        """Calls in flight (cheap: used to spread originates over servers)."""
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def customer_channel(self, call_id: str) -> str | None:
        """The name (or, before ``Newchannel``, the uniqueid) of the channel to act on for a call."""
        call = self._calls.get(call_id)
        if call is None:
            return None
        c = call.customer
        if c is not None and c.alive:
            return c.name or c.uid
        if c is None and call.channel_id:
            return call.channel_id  # Asterisk resolves a uniqueid where a channel name is expected
        return None

    def vanish(self, call_id: str) -> list[CallEvent]:
        """The PBX lost this call (restart, reconnect found nothing): end it as unknown."""
        call = self._calls.get(call_id)
        if call is None:
            return []
        return self._end(call, 0, "unknown")

    def reconcile(self, channels: Iterable[Mapping[str, str]], only: Iterable[str] | None = None) -> list[CallEvent]:
        """Bring every call in flight up to date with a ``CoreShowChannels`` listing after a reconnect.

        A call none of whose channels is listed has vanished (ended while we were
        away, or the PBX restarted): ``Ended(0, "unknown")``, because the real
        cause was never seen and guessing one could trigger a wrong retry. A call
        still listed continues; a customer channel found ``Up`` counts as answered.
        ``only`` limits the check to calls registered before the listing was asked
        for (a newer originate may not have its channels yet).
        """
        listed = {m.get("Uniqueid", ""): m for m in channels}
        out: list[CallEvent] = []
        wanted = None if only is None else set(only)
        for call in list(self._calls.values()):
            if wanted is not None and call.call_id not in wanted:
                continue
            uids = set(call.chans) | {u for u in (call.channel_id, call.other_channel_id) if u}
            alive = [u for u in uids if u in listed]
            if not alive:
                out += self._end(call, 0, "unknown")
                continue
            for uid in alive:
                m = listed[uid]
                if uid not in call.chans:
                    self._add_chan(call, uid, m.get("Channel", ""))
                chan = call.chans[uid]
                state = m.get("ChannelStateDesc", "")
                if state == "Up" and chan.half in (0, 1) and not call.answered:
                    call.answered = True
                    if not (call.amd and m.get("Application") == "AMD"):
                        out += self._send_answer(call, AnswerKind.UNKNOWN)
            for uid, chan in call.chans.items():
                if uid not in listed:
                    chan.alive = False
            out += self._maybe_end(call)
        return out

    # -- AMI traffic ---------------------------------------------------------------------

    def interested(self, event: str | None, raw: str | None = None) -> bool:
        """Whether a message may change a call, from its event name and, if given, its raw frame text;
        False lets the backend skip parsing it. Errs towards True: ``feed`` decides exactly."""
        if event not in _DECIDING:
            return False
        if raw is None:
            return True
        if event == "VarSet":
            return "Variable: AMDSTATUS" in raw
        if event == "Newexten":
            return self._abandon_marker in raw
        return True

    def prefilter(self, also: Iterable[str] = ()) -> Callable[[str, str], bool]:
        """``keep(event, raw)`` for :meth:`AmiProtocol.messages`: :meth:`interested` with the event names
        in ``also`` (the caller's own) and any frame carrying an ``ActionID`` (it may answer an action)
        kept, in one call per frame: it runs for every event a PBX sends."""
        always = (_DECIDING - {"VarSet", "Newexten"}) | frozenset(also)
        marker = self._abandon_marker

        def keep(event: str, raw: str) -> bool:
            if event in always:
                return True
            if event == "VarSet":
                return "Variable: AMDSTATUS" in raw or "ActionID:" in raw
            if event == "Newexten":
                return marker in raw or "ActionID:" in raw
            return "ActionID:" in raw

        return keep

    def prefilter_headers(self, also: Iterable[str] = ()) -> Callable[[str, Mapping[str, Any]], bool]:
        """:meth:`prefilter` for a transport that has already parsed the headers (panoramisk's
        ``Message``): ``keep(event, headers)`` with the same answers, read from two headers at most."""
        always = (_DECIDING - {"VarSet", "Newexten"}) | frozenset(also)
        context = self.abandon_context

        def keep(event: str, headers: Mapping[str, Any]) -> bool:
            if event in always:
                return True
            if event == "VarSet":
                return headers.get("Variable") == "AMDSTATUS" or "ActionID" in headers
            if event == "Newexten":
                return headers.get("Context") == context or "ActionID" in headers
            return "ActionID" in headers

        return keep

    def feed(self, msg: Mapping[str, str]) -> list[CallEvent]:
        """Consume one AMI message; return the call events it completes (often none).

        Most of a real Asterisk's traffic decides nothing here (dialplan steps, ``DIAL*`` and other
        variables, device states, caller ID updates: about 80 of the ~96 events of an answered call),
        so those are dropped on their name, or on one header, before any lookup: the ingest rate of
        a whole PBX depends on how cheaply the engine ignores what it does not need.
        """
        ev = msg.get("Event")
        if ev not in _DECIDING:
            return []
        if ev == "VarSet":
            if msg.get("Variable") != "AMDSTATUS":
                return []
        elif ev == "Newexten":
            if msg.get("Context") != self.abandon_context:
                return []
        elif ev == "OriginateResponse":
            return self._originate_response(msg)
        if ev in ("BridgeEnter", "BridgeLeave", "BridgeDestroy"):
            return self._bridge(ev, msg)
        uid = msg.get("Uniqueid")
        if uid is None:
            return []
        call = self._by_uid.get(uid)
        if call is None:
            if ev == "Newchannel" and (self._unclaimed or self._claimed_base):
                call = self._claim(msg)
            if call is None:
                return []
        chan = call.chans.get(uid)
        if chan is None:
            chan = self._add_chan(call, uid, msg.get("Channel", ""))
        elif not chan.name and msg.get("Channel"):
            chan.name = msg["Channel"]
        if ev == "Newstate":
            return self._newstate(call, chan, msg.get("ChannelStateDesc", ""))
        if ev == "Hangup":
            chan.alive = False
            chan.cause = _int(msg.get("Cause"))
            return self._maybe_end(call)
        if ev == "VarSet" and msg.get("Variable") == "AMDSTATUS":
            return self._amd(call, msg.get("Value", ""))
        if ev == "UserEvent":
            name = msg.get("UserEvent", "")
            if name == "AMDResult":
                return self._amd(call, msg.get("Status", ""))
            if name == "DialerAbandon" and chan.half in (0, 1):
                return self._abandon(call)
            if name == "DialerOptOut" and chan.half in (0, 1):
                return self._opt_out(call)
            return []
        if ev == "Newexten" and chan.half in (0, 1) and msg.get("Context") == self.abandon_context:
            return self._abandon(call)
        return []

    # -- transitions -----------------------------------------------------------------------

    def _newstate(self, call: _Call, chan: _Chan, state: str) -> list[CallEvent]:
        chan.state = state
        out: list[CallEvent] = []
        if state == "Ringing" and not call.ringing and not call.answered:
            call.ringing = True
            out.append(Ringing(call.call_id))
        elif state == "Up" and chan.half in (0, 1):
            out += self._mark_answered(call)
        return out

    def _mark_answered(self, call: _Call) -> list[CallEvent]:
        if call.answered:
            return []
        call.answered = True
        return [] if call.amd else self._send_answer(call, AnswerKind.UNKNOWN)

    def _send_answer(self, call: _Call, kind: AnswerKind) -> list[CallEvent]:
        if call.answer_sent:
            return []
        call.answer_sent = True
        return [Answered(call.call_id, kind)]

    def _amd(self, call: _Call, status: str) -> list[CallEvent]:
        call.answered = True
        return self._send_answer(call, amd_kind(status))

    def _abandon(self, call: _Call) -> list[CallEvent]:
        if call.abandoned or call.connected:
            return []
        call.abandoned = True
        call.answered = True
        return [*self._send_answer(call, AnswerKind.UNKNOWN), Abandoned(call.call_id)]

    def _opt_out(self, call: _Call) -> list[CallEvent]:
        if call.opted_out:
            return []
        call.opted_out = True
        # The opt-out context is only reached from the abandon message; if its events were missed
        # (a reconnect), the abandon is implied. The request itself is never dropped.
        return [*self._abandon(call), OptOut(call.call_id)]

    def _originate_response(self, msg: Mapping[str, str]) -> list[CallEvent]:
        call = self._by_action.get(msg.get("ActionID", ""))
        if call is None:
            return []
        call.reason = _int(msg.get("Reason"))
        uid = msg.get("Uniqueid", "")
        if msg.get("Response") == "Success" or call.reason == REASON_ANSWERED:
            if uid and uid != "<unknown>" and uid not in call.chans and uid not in self._by_uid:
                self._add_chan(call, uid, msg.get("Channel", ""), half=1)
            return self._mark_answered(call)
        if not call.chans:
            # Refused before any channel existed (bad technology, no route): nothing else will come.
            cause = REASON_CAUSE.get(call.reason, 0)
            return self._end(call, cause, reason_word(cause, False))
        return self._maybe_end(call)

    def _bridge(self, ev: str, msg: Mapping[str, str]) -> list[CallEvent]:
        bid = msg.get("BridgeUniqueid", "")
        if ev == "BridgeDestroy":
            self._bridges.pop(bid, None)
            return []
        uid = msg.get("Uniqueid", "")
        if ev == "BridgeLeave":
            members = self._bridges.get(bid)
            if members is not None:
                members.pop(uid, None)
            return []
        members = self._bridges.setdefault(bid, {})
        members[uid] = msg.get("Channel", "")
        out: list[CallEvent] = []
        for muid in members:
            call = self._by_uid.get(muid)
            if call is None or call.connected or call.abandoned:
                continue
            chan = call.chans.get(muid)
            if chan is None or chan.half not in (0, 1):
                continue
            agent = None
            for ouid, oname in members.items():
                if ouid == muid or ouid in call.chans:
                    continue
                agent = self._agents.get(ouid) or call.pending_agent or self._agent_from_name(oname)
                if agent:
                    break
            if agent:
                call.connected = True
                out += self._send_answer(call, AnswerKind.UNKNOWN)
                out.append(Connected(call.call_id, agent))
        return out

    def _maybe_end(self, call: _Call) -> list[CallEvent]:
        if not call.chans or any(c.alive for c in call.chans.values()):
            return []
        cause = 0
        for half in (2, 0, 1):  # the true cause is on ;2; ;1 often reports 0
            for c in call.chans.values():
                if c.half == half and c.cause:
                    cause = c.cause
                    break
            if cause:
                break
        if not cause and not call.answered:
            if call.reason is None:
                return []  # the OriginateResponse will tell why; it may come after the hangups
            cause = REASON_CAUSE.get(call.reason, 0)
        return self._end(call, cause, reason_word(cause, call.answered))

    def _end(self, call: _Call, cause: int, reason: str) -> list[CallEvent]:
        out: list[CallEvent] = []
        if call.answered and not call.answer_sent and reason != "unknown":
            out += self._send_answer(call, AnswerKind.UNKNOWN)  # hung up during AMD: a live answer
        out.append(Ended(call.call_id, cause, reason))
        self._calls.pop(call.call_id, None)
        self._drop(call)
        return out

    # -- bookkeeping -----------------------------------------------------------------------

    def _drop(self, call: _Call) -> None:
        self._by_action.pop(call.action_id, None)
        for uid in (*call.chans, call.channel_id, call.other_channel_id):
            if uid and self._by_uid.get(uid) is call:
                del self._by_uid[uid]
        if call in self._unclaimed:
            self._unclaimed.remove(call)
        for c in call.chans.values():
            if c.half == 1 and self._claimed_base.get(c.name[:-2]) is call:
                del self._claimed_base[c.name[:-2]]

    def _add_chan(self, call: _Call, uid: str, name: str, half: int | None = None) -> _Chan:
        if half is None:
            if call.channel_id and uid == call.channel_id:
                half = 1 if name.endswith(";1") or not name else 0
                if name and not name.startswith("Local/"):
                    half = 0
            elif call.other_channel_id and uid == call.other_channel_id:
                half = 2
            else:
                half = 1 if name.endswith(";1") else 2 if name.endswith(";2") else 0
        chan = _Chan(uid, half, name)
        call.chans[uid] = chan
        self._by_uid[uid] = call
        return chan

    def _claim(self, msg: Mapping[str, str]) -> _Call | None:
        """Match a ``Newchannel`` to an originate sent without ``ChannelId`` (by Local channel name)."""
        name = msg.get("Channel", "")
        if not name.startswith("Local/") or name[-2:] not in (";1", ";2"):
            return None
        base = name[:-2]
        if name.endswith(";1"):
            dial = base.rsplit("-", 1)[0]
            for call in self._unclaimed:
                if call.channel == dial:
                    self._unclaimed.remove(call)
                    self._claimed_base[base] = call
                    return call
            return None
        return self._claimed_base.pop(base, None)

    def _agent_from_name(self, name: str) -> str | None:
        if self._agent_re is None:
            return None
        m = self._agent_re.match(name)
        if m is None:
            return None
        return next((g for g in m.groups() if g), None)


def _dial_base(channel: str) -> str:
    """``Local/123@ctx/n`` -> ``Local/123@ctx`` (channel names drop the options)."""
    if channel.startswith("Local/"):
        head, _sep, _opts = channel[len("Local/"):].partition("/")
        return "Local/" + head
    return channel


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0
