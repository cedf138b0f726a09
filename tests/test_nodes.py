"""Several engine nodes on one campaign, through the real command line: real ``dialer`` processes
(simulated PBX, real time) sharing one real redis-server.

What is checked comes from the records of what was dialled (each node's results file and the
store's results stream), never from counters: no attempt of a lead dialled twice, no number over
its daily cap, no call outside the calling window, no call to a DNC number, and after a node is
killed with SIGKILL, every lead it held dialled by the survivor, none twice, none lost.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from redis_server import _free_port

from engine.dialer import MAX_CALL_S
from engine.models import CallAttempt, CallResult, Lead, Outcome
from engine.store.base import Caps
from engine.store.redis import RedisStore

ROOT = Path(__file__).resolve().parents[1]
DIALER = [sys.executable, "-m", "engine.cli"]
INDEX_KEY = "6e" * 32  # the nodes and this test must share the blind-index and data keys
DATA_KEY = "d4" * 32
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "DIALER_INDEX_KEY": INDEX_KEY, "DIALER_DATA_KEY": DATA_KEY}
HOURS = ("09:00", "15:00")  # the calling window, local time of the called party
GUARD_S = 120  # a hung process fails the test instead of hanging it; no assertion is about time


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALER_INDEX_KEY", INDEX_KEY)
    monkeypatch.setenv("DIALER_DATA_KEY", DATA_KEY)


def _zone(local_hour: int) -> str:
    """A fixed-offset zone where it is now about ``local_hour`` o'clock (Etc/GMT signs are inverted)."""
    offset = (local_hour - datetime.now(UTC).hour + 36) % 24 - 12  # -12 .. 11
    return "Etc/GMT" + (f"{-offset:+d}" if offset else "")


def campaign(tmp_path: Path, url: str, prefix: str, *, name: str = "campaign", mode: str = "progressive",
             lease: str = "5m", caps: tuple[int, int, int] = (1, 3, 2), max_attempts: int = 2, agents: int = 4,
             think: str = "0.1s", talk: str = "0.4s", busy_rate: float = 0.15) -> Path:
    """The shared campaign as one node runs it: the ids, store and rules are the campaign's; the simulated
    agents and customers (``[simulation]``) are this node's own."""
    per_day, per_24h, lifetime = caps
    text = f"""
[campaign]
id = "shared"
mode = "{mode}"
store = "redis"
timezone = "UTC"

[redis]
url = "{url}"
prefix = "{prefix}"

[pacing]
lease = "{lease}"
interval = "0.2s"
drain_timeout = "30s"

[retry]
max_attempts = {max_attempts}
busy = "1s"
no_answer = "1s"
congestion = "1s"
failed = "1s"
machine = "1s"
customer_hangup = "1s"

[caps]
per_day = {per_day}
per_24h = {per_24h}
lifetime = {lifetime}

[hours]
start = "{HOURS[0]}"
end = "{HOURS[1]}"

[simulation]
agents = {agents}
leads = 0  # the store holds the campaign's leads (imported): this node adds none
seed = 3

[simulation.customers]
answer_rate = 1.0  # every call not busy or failed is answered: nobody rings out (15 s at least)
busy_rate = {busy_rate}
failed_rate = 0.05
invalid_rate = 0.0
ring_mean = "0.3s"
talk_mean = "{talk}"
patience = "5s"
refusal_rate = 0.15
sale_rate = 0.1
callback_rate = 0.0

[simulation.agent]
wrap_mean = "0.1s"
think_mean = "{think}"
skip_rate = 0.0
"""
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def number(i: int) -> str:
    return f"+1415555{i:04d}"


def write_leads(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = tmp_path / "leads.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["lead_id", "phone", "timezone"])
        w.writerows(rows)
    return path


def dialer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DIALER, *args], cwd=ROOT, capture_output=True, text=True, timeout=GUARD_S, env=ENV)


def start_node(cfg: Path, node: str, results: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*DIALER, "run", str(cfg), "--realtime", "--node-id", node, "--json", "--quiet",
                             "--results", str(results), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def counts(url: str, prefix: str) -> tuple[dict[str, int], float | None]:
    """Leads per status and the next time a lead is due, as any node sees them."""
    async def read(store: RedisStore) -> tuple[dict[str, int], float | None]:
        return await store.lead_counts("shared"), await store.next_eligible_at("shared")

    return store_call(read, url, prefix)


def wait_for(procs: list[subprocess.Popen[str]], condition: Any) -> None:
    """Poll the shared store until ``condition()``; a node exiting meanwhile fails the test."""
    deadline = time.monotonic() + GUARD_S
    while not condition():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a node exited early ({p.returncode}): {p.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("the nodes never got there")  # a hang guard, not a timing check
        time.sleep(0.05)


def stop_when(procs: list[subprocess.Popen[str]], settled: Any) -> None:
    """Wait until ``settled()``, then SIGTERM every node: they stop dialling, drain and report. A shared
    campaign whose last leads wait for tomorrow (a daily cap, a closed window) never runs dry by itself."""
    wait_for(procs, settled)
    for p in procs:
        p.send_signal(signal.SIGTERM)


def serving(port: int) -> bool:
    """The node answers on its metrics port: its dialer is up and pacing."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=GUARD_S)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def file_rows(results: Path) -> list[dict[str, Any]]:
    """Every result row the nodes wrote to their files (one JSONL file per node and run)."""
    rows = []
    for path in sorted(results.glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return rows


def store_call(coro_fn: Any, url: str, prefix: str) -> Any:
    """Run one coroutine against the shared store, from the test's side."""
    async def go() -> Any:
        store = RedisStore(url, prefix=prefix)
        try:
            return await coro_fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def local_date(started: str, zone: str) -> str:
    return datetime.fromisoformat(started).astimezone(ZoneInfo(zone)).date().isoformat()


def local_date_ts(ts: float, zone: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(zone)).date().isoformat()


def test_two_nodes_share_a_campaign_without_a_call_that_must_not_be_made(tmp_path: Path, redis_url: str) -> None:
    prefix = "twonodes"
    cfg = campaign(tmp_path, redis_url, prefix)
    open_zone, closed_zone = _zone(12), _zone(0)  # noon: inside 09:00-15:00 for hours; midnight: closed
    groups: dict[str, list[int]] = {
        "open": list(range(0, 60)),
        "closed": list(range(100, 110)),  # their local time is outside the window all along
        "dnc_file": list(range(200, 210)),  # the national list, loaded from a file before the run
        "dnc_campaign": list(range(300, 305)),  # this campaign's own list
        "capped": list(range(400, 410)),  # already called today in another campaign (per day cap: 1)
    }
    zone_of = {f"L{i}": closed_zone if g == "closed" else open_zone for g, ids in groups.items() for i in ids}
    phone_of = {f"L{i}": number(i) for ids in groups.values() for i in ids}
    leads = write_leads(tmp_path, [(lid, phone_of[lid], zone_of[lid]) for lid in phone_of])
    imported = dialer("leads", "import", str(leads), "--campaign", str(cfg))
    assert imported.returncode == 0, imported.stderr
    assert f"{len(phone_of)} leads accepted ({len(phone_of)} new)" in imported.stdout

    dnc_file = tmp_path / "dnc.txt"
    dnc_file.write_text("# national list\n" + "\n".join(number(i) for i in groups["dnc_file"]) + "\n")
    today = datetime.now(ZoneInfo(open_zone)).date().isoformat()

    async def prepare(store: RedisStore) -> None:
        assert await store.load_dnc_file(dnc_file) == len(groups["dnc_file"])
        assert await store.add_dnc([number(i) for i in groups["dnc_campaign"]], campaign_id="shared") == 5
        # The capped numbers were dialled today by another campaign: the per-number day cap is global.
        others = [Lead(lead_id=f"O{i}", campaign_id="other", phone=number(i), timezone=open_zone)
                  for i in groups["capped"]]
        await store.add_leads(others)
        for lead in others:
            call = CallAttempt(call_id=f"other-{lead.lead_id}", lead=lead, campaign_id="other", attempt_no=1)
            res = await store.reserve_attempt(call, now=time.time(), day_key=today, caps=Caps(lock_s=1.0),
                                              node_id="elsewhere")
            assert res.ok, res

    store_call(prepare, redis_url, prefix)
    # A start gate, so that both nodes compete from the same moment however slowly either starts: every lead
    # is held by a placeholder claim until both nodes serve their metrics (they are in their pacing loops).
    gate = store_call(lambda s: s.claim_leads("shared", 1000, now=time.time(), node_id="gate", lease_s=600),
                      redis_url, prefix)
    assert len(gate) == len(phone_of)

    results = tmp_path / "results"
    ports = [_free_port(), _free_port()]
    nodes = [start_node(cfg, node, results, "--metrics-port", str(port)) for node, port in zip(("n1", "n2"), ports,
                                                                                               strict=True)]
    try:
        wait_for(nodes, lambda: all(serving(port) for port in ports))

        async def open_gate(store: RedisStore) -> None:
            for lead in gate:
                await store.release_lead(lead, now=time.time(), next_eligible=time.time())

        store_call(open_gate, redis_url, prefix)
        def settled() -> bool:  # nothing held, nothing in a call, nothing due before tomorrow's window
            by_status, due = counts(redis_url, prefix)
            return by_status["leased"] == by_status["in_call"] == 0 and (due is None or due > time.time() + 3600)

        stop_when(nodes, settled)
        summaries = [finish(p) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()

    rows = file_rows(results)
    by_node = Counter(row["call_id"].split("-")[1] for row in rows)  # call ids are <campaign>-<node>-<n>
    assert set(by_node) == {"n1", "n2"}, by_node  # both nodes really dialled the shared campaign
    assert sum(s["after_drain"]["dials"] for s in summaries) == len(rows)  # what each node says it dialled

    # The files and the store agree on what was dialled: every attempt recorded once, in both.
    stream = store_call(lambda s: s.results("shared"), redis_url, prefix)
    assert sorted(r["call_id"] for r in stream) == sorted(r["call_id"] for r in rows)

    # 1. No attempt dialled twice: (lead, attempt number) is unique across both nodes.
    attempts = Counter((row["lead_id"], row["attempt_no"]) for row in rows)
    assert [k for k, n in attempts.items() if n > 1] == []
    # ... and each lead's attempts are 1, 2, ... with no gap (nothing reserved and lost).
    per_lead: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        per_lead[row["lead_id"]].append(row["attempt_no"])
    assert all(sorted(a) == list(range(1, len(a) + 1)) for a in per_lead.values()), per_lead

    # 2. No number over its daily cap (1 a local day), counting the other campaign's call for the capped ones.
    day_calls = Counter((phone_of[row["lead_id"]], local_date(row["started"], zone_of[row["lead_id"]]))
                        for row in rows)
    for i in groups["capped"]:
        day_calls[(number(i), today)] += 1
    assert max(day_calls.values()) == 1, [k for k, n in day_calls.items() if n > 1]
    assert not {row["lead_id"] for row in rows} & {f"L{i}" for i in groups["capped"]}

    # 3. None outside the calling window, in the called party's local time.
    for row in rows:
        local = datetime.fromisoformat(row["started"]).astimezone(ZoneInfo(zone_of[row["lead_id"]]))
        assert HOURS[0] <= f"{local:%H:%M}" < HOURS[1], (row["lead_id"], local)
    assert not {row["lead_id"] for row in rows} & {f"L{i}" for i in groups["closed"]}

    # 4. None to a DNC number: neither listed before the run, nor after a refusal during it.
    listed = {f"L{i}" for i in groups["dnc_file"] + groups["dnc_campaign"]}
    assert not {row["lead_id"] for row in rows} & listed
    refused_at = {row["lead_id"]: row["attempt_no"] for row in rows if row["disposition"] in ("refused", "dnc_request")}
    assert [row for row in rows if row["lead_id"] in refused_at and row["attempt_no"] > refused_at[row["lead_id"]]] \
        == []

    # The rules were really in play: the gate refused exactly these groups, for these reasons.
    blocks = store_call(lambda s: s.blocks("shared"), redis_url, prefix)
    rules: dict[str, set[str]] = defaultdict(set)
    for b in blocks:
        rules[b["rule"]].add(b["lead_id"])
    assert rules["compliance.hours"] == {f"L{i}" for i in groups["closed"]}
    assert rules["compliance.dnc"] == listed
    assert {f"L{i}" for i in groups["capped"]} <= rules["compliance.cap_per_day"]
    assert (rules["compliance.cap_per_day"] - {f"L{i}" for i in groups["capped"]}) <= set(per_lead)  # retries


def lead_states(url: str, prefix: str) -> dict[str, dict[str, str]]:
    """Each lead's record as the store keeps it (status, holder node): what a node held when it died."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:{{c:shared}}:lead:*", count=1000))
        return {k.rsplit(":", 1)[1]: client.hgetall(k) for k in keys}
    finally:
        client.close()


def test_a_killed_node_loses_no_lead_and_none_is_dialled_twice(tmp_path: Path, redis_url: str) -> None:
    prefix = "killed"
    # n1's agents read each preview for seconds and talk for a minute: when it is killed it holds leads it
    # has not dialled yet and calls in flight. n2, started once n1 is dead, is the surviving node; its
    # agents are quick. Leases are short; one attempt per lead.
    slow = campaign(tmp_path, redis_url, prefix, name="n1", mode="preview", lease="2s", caps=(5, 5, 5),
                    max_attempts=1, agents=6, think="2s", talk="60s", busy_rate=0.0)
    fast = campaign(tmp_path, redis_url, prefix, name="n2", mode="preview", lease="2s", caps=(5, 5, 5),
                    max_attempts=1, agents=6, think="0.05s", busy_rate=0.0)
    zone = _zone(12)
    phone_of = {f"K{i}": number(i) for i in range(30)}
    leads = write_leads(tmp_path, [(lid, p, zone) for lid, p in phone_of.items()])
    imported = dialer("leads", "import", str(leads), "--campaign", str(slow))
    assert imported.returncode == 0, imported.stderr

    results = tmp_path / "results"
    n1 = start_node(slow, "n1", results)
    n2: subprocess.Popen[str] | None = None
    try:
        def n1_holds_both() -> bool:
            held = Counter(r.get("st") for r in lead_states(redis_url, prefix).values() if r.get("node") == "n1")
            return held["leased"] > 0 and held["in_call"] > 0

        wait_for([n1], n1_holds_both)
        n1.send_signal(signal.SIGKILL)
        n1.wait(GUARD_S)
        assert n1.returncode == -signal.SIGKILL
        at_death = lead_states(redis_url, prefix)
        leased = {lid for lid, r in at_death.items() if r.get("node") == "n1" and r["st"] == "leased"}
        in_flight = {lid for lid, r in at_death.items() if r.get("node") == "n1" and r["st"] == "in_call"}
        assert leased and in_flight

        async def locked(store: RedisStore) -> set[str]:
            now = time.time()
            return {lid for lid in leased if (await store.dial_context(
                Lead(lead_id=lid, campaign_id="shared", phone=phone_of[lid]), now=now, day_key="-")).in_flight}

        # Killed between the reservation's two scripts (number locked, lead not yet marked in a call): that
        # number stays locked like a call in flight, the lead is refused as in_flight and waits (rare).
        half = store_call(locked, redis_url, prefix)

        n2 = start_node(fast, "n2", results)  # the surviving node

        def all_dialled() -> bool:  # nothing held, nothing due soon: only n1's calls in flight are left
            by_status, due = counts(redis_url, prefix)
            return by_status["leased"] == 0 and (due is None or due > time.time() + 1800)

        stop_when([n2], all_dialled)
        finish(n2)
        # What an operator sees of the dead node: its calls, held until their number locks lapse (hours away)
        listing = dialer("store", "calls", str(fast), "--json")
        assert listing.returncode == 0, listing.stderr
        held = json.loads(listing.stdout)
        assert list(held) == ["n1"] and held["n1"]["calls"] == len(in_flight), held
        assert all(lapse > time.time() + MAX_CALL_S / 2 for lapse in held["n1"]["locks_lapse"])
        text = dialer("store", "calls", str(fast))
        assert f"node n1: {len(in_flight)} calls in progress" in text.stdout and "n2" not in text.stdout
    finally:
        for p in (n1, n2):
            if p is not None and p.poll() is None:
                p.kill()

    # From the store's results stream (the dead node's file may have lost its last unflushed rows):
    rows = store_call(lambda s: s.results("shared"), redis_url, prefix)
    assert len({r["call_id"] for r in rows}) == len(rows)
    assert [k for k, n in Counter((r["lead_id"], r["attempt_no"]) for r in rows).items() if n > 1] == []
    dialled_by = {r["lead_id"]: r["call_id"].split("-")[1] for r in rows}
    # What n1 held undialled was dialled by n2 once its lease lapsed, ...
    assert {lid: dialled_by.get(lid) for lid in leased - half} == dict.fromkeys(leased - half, "n2")
    # ... every lead was dialled exactly once (one attempt each), bar n1's calls in flight: not lost, held.
    assert set(dialled_by) == set(phone_of) - in_flight - half
    assert all(r["attempt_no"] == 1 for r in rows)
    final = lead_states(redis_url, prefix)
    assert {lid for lid, r in final.items() if r["st"] != "done"} == in_flight | half
    assert all(final[lid]["st"] == "in_call" and final[lid]["att"] == "1" for lid in in_flight)
    assert all(final[lid]["st"] == "pending" and final[lid]["att"] == "0" for lid in half)
    # n2's own file says the same as the store about n2's calls.
    assert sorted(r["call_id"] for r in file_rows(results) if "-n2-" in r["call_id"]) == \
        sorted(r["call_id"] for r in rows if "-n2-" in r["call_id"])

    # n1's calls in flight: the PBX may still carry them, so each number stays locked and its lead held until
    # the lock lapses (ring timeout + the longest call); then the attempt is recorded once as lost and the lead
    # comes back for its next attempt, never redialled as the same one.
    lapsed = time.time() + 25.0 + MAX_CALL_S + 1

    async def after_the_lock(store: RedisStore) -> tuple[list[Lead], list[Lead], list[dict[str, Any]], bool]:
        early = await store.claim_leads("shared", 100, now=time.time(), node_id="n3", lease_s=60)
        back = await store.claim_leads("shared", 100, now=lapsed, node_id="n3", lease_s=60)
        lead = next(x for x in back if x.lead_id in in_flight)
        call = CallAttempt(call_id="shared-n3-1", lead=lead, campaign_id="shared", attempt_no=lead.attempts + 1)
        res = await store.reserve_attempt(call, now=lapsed, day_key=local_date_ts(lapsed, zone), caps=Caps(),
                                          node_id="n3")
        return early, back, await store.results("shared"), res.ok

    early, back, rows_after, redial_ok = store_call(after_the_lock, redis_url, prefix)
    assert early == []
    assert {lead.lead_id: lead.attempts for lead in back} == {**dict.fromkeys(in_flight, 1), **dict.fromkeys(half, 0)}
    lost = rows_after[len(rows):]
    assert sorted((r["lead_id"], r["attempt_no"], r["outcome"], r["call_id"].split("-")[1]) for r in lost) == \
        sorted((lid, 1, "unknown", "n1") for lid in in_flight)
    assert redial_ok  # the number lock has lapsed too: the next attempt (2) may go out


def test_a_number_found_invalid_by_a_call_does_not_come_back_with_the_next_import(tmp_path: Path,
                                                                                redis_url: str) -> None:
    cfg = campaign(tmp_path, redis_url, "reimport")
    leads = write_leads(tmp_path, [(f"L{i}", number(i), "UTC") for i in range(1, 4)])
    first = dialer("leads", "import", str(leads), "--campaign", str(cfg))
    assert first.returncode == 0 and "3 leads accepted (3 new)" in first.stdout, first.stderr

    async def dial_l2_into_an_unallocated_number(store: RedisStore) -> None:
        lead = next(x for x in await store.claim_leads("shared", 3, now=time.time(), node_id="t", lease_s=60)
                    if x.lead_id == "L2")
        call = CallAttempt("c-l2", lead, "shared", 1)
        assert (await store.reserve_attempt(call, now=time.time(), day_key="2026-01-05", caps=Caps(9, 9, 9, 60.0),
                                            node_id="t")).ok
        row = CallResult(call_id="c-l2", campaign_id="shared", lead_id="L2", attempt_no=1,
                         outcome=Outcome.INVALID_NUMBER, cause=1, disposition=None, agent_id=None, answer_kind=None,
                         started="", ring_s=None, wait_s=None, talk_s=None, phone_masked="")
        await store.finish_attempt(call, row, now=time.time(), next_eligible=None, abandoned=False, live=False,
                                   invalid_number=True)

    store_call(dial_l2_into_an_unallocated_number, redis_url, "reimport")
    again = dialer("leads", "import", str(leads), "--campaign", str(cfg))
    assert again.returncode == 0 and "2 leads accepted (0 new), 1 rejected" in again.stdout, again.stdout
    assert f"{leads}:3: phone: number found invalid on an earlier call" in again.stderr
    rejects = (tmp_path / "leads.rejects.csv").read_text()
    assert "number found invalid on an earlier call" in rejects


def test_store_commands_load_a_dnc_file_and_rotate_the_data_key(tmp_path: Path, redis_url: str) -> None:
    cfg = campaign(tmp_path, redis_url, "ops")
    dnc = tmp_path / "dnc.txt"
    dnc.write_text(f"# national list extract\n{number(1)}\n{number(2)}\n\n2125550100\n")
    loaded = dialer("store", "dnc-load", str(dnc), "--campaign", str(cfg))
    assert loaded.returncode == 0 and "2 numbers added to the global DNC list" in loaded.stdout, loaded.stderr
    assert "not E.164" in loaded.stderr and "2125550100" not in loaded.stderr  # counted, never shown
    own = dialer("store", "dnc-load", str(dnc), "--campaign", str(cfg), "--campaign-list")
    assert own.returncode == 0 and "campaign shared's DNC list" in own.stdout

    async def listed(store: RedisStore) -> tuple[list[bool], list[bool]]:
        return (await store.dnc_contains([number(1), number(2), number(3)]),
                await store.dnc_contains([number(3)], campaign_id="shared"))

    assert store_call(listed, redis_url, "ops") == ([True, True, False], [False])

    # rotation: leads written under the old key; the new key first, the old one after it; rewrite; drop the old
    leads = write_leads(tmp_path, [(f"L{i}", number(i), "UTC") for i in range(3, 6)])
    assert dialer("leads", "import", str(leads), "--campaign", str(cfg)).returncode == 0
    new_key = "5a" * 32
    rotate_env = {**ENV, "DIALER_DATA_KEY": f"{new_key},{DATA_KEY}"}
    done = subprocess.run([*DIALER, "store", "reencrypt", str(cfg)], cwd=ROOT, capture_output=True, text=True,
                          timeout=GUARD_S, env=rotate_env)
    assert done.returncode == 0 and "campaign shared: 3 lead records re-encrypted" in done.stdout, done.stderr

    async def claim_with_the_new_key_only(url: str) -> list[str]:
        from engine.crypto import FieldCipher

        store = RedisStore(url, prefix="ops", cipher=FieldCipher(bytes.fromhex(new_key)))
        try:
            return sorted(x.phone for x in await store.claim_leads("shared", 9, now=time.time(), node_id="t",
                                                                    lease_s=60))
        finally:
            await store.close()

    assert asyncio.run(claim_with_the_new_key_only(redis_url)) == [number(3), number(4), number(5)]


def test_store_commands_need_a_shared_store(tmp_path: Path) -> None:
    cfg = tmp_path / "memory.toml"
    cfg.write_text('[campaign]\nid = "m"\n')
    for command in (["reencrypt"], ["migrate", "--dry-run"], ["calls"]):
        done = dialer("store", *command, str(cfg))
        assert done.returncode == 2 and "works on a shared (Redis) store" in done.stderr, command


class _Journalled(RedisStore):
    """The real Redis store, writing what matters to the end of a run to a journal shared by the nodes:
    each claim (how many leads came), each end-of-leads check (whether none was left), each finish
    (whether it closed the lead)."""

    def __init__(self, url: str, prefix: str, node: str, journal: list[tuple[str, str, int]],
                 on_finish: Any = None) -> None:
        super().__init__(url, prefix=prefix)
        self.node, self.journal, self.on_finish = node, journal, on_finish

    async def claim_leads(self, campaign_id: str, n: int, **kw: Any) -> list[Lead]:
        got = await super().claim_leads(campaign_id, n, **kw)
        self.journal.append(("claim", self.node, len(got)))
        return got

    async def next_eligible_at(self, campaign_id: str) -> float | None:
        at = await super().next_eligible_at(campaign_id)
        self.journal.append(("check", self.node, int(at is None)))
        return at

    async def finish_attempt(self, call: CallAttempt, result: CallResult, **kw: Any) -> None:
        await super().finish_attempt(call, result, **kw)
        self.journal.append(("finish", self.node, int(kw["next_eligible"] is None)))
        if self.on_finish is not None:
            self.on_finish()


def test_every_node_of_a_shared_campaign_stops_within_a_few_rounds_of_its_end(tmp_path: Path,
                                                                              redis_url: str) -> None:
    """Two nodes in one process (one event loop, real time), each with its own connections to one redis-server.
    Busy lines retry a second later, so a node that runs short of leads is told "leads remain" (a retry
    not yet due) for a while before the end: it must still notice the end within a few pacing rounds of
    the last call's finish (it used to look again only 30 s later), and without a read on every round."""
    from engine.clock import SystemClock
    from engine.config import load_campaign
    from simulations.runner import run_sim_campaign

    # Every call busy or failed (both retried a second later), two attempts a lead: three leads, dialled in
    # two waves a second apart, on nodes of four agents. The second node starts when the first wave is over:
    # short of leads with nothing in flight, it is told "leads remain" (the retries) before the second wave,
    # and the campaign ends after it.
    cfg = load_campaign(campaign(tmp_path, redis_url, "ends", caps=(5, 5, 4), max_attempts=2, busy_rate=0.95))
    zone = _zone(12)
    leads = [Lead(lead_id=f"L{i}", campaign_id="shared", phone=number(i), timezone=zone) for i in range(3)]
    journal: list[tuple[str, str, int]] = []

    async def go() -> None:
        first_wave = asyncio.Event()

        def finished() -> None:
            if sum(e[0] == "finish" for e in journal) >= len(leads):
                first_wave.set()

        stores = [_Journalled(redis_url, "ends", f"n{i}", journal, finished) for i in (1, 2)]
        try:
            await stores[0].add_leads(leads)

            async def node(i: int) -> None:
                await run_sim_campaign(cfg, leads=[], store=stores[i], node_id=f"n{i + 1}", clock=SystemClock(),
                                       seed=i + 1)
                journal.append(("stopped", f"n{i + 1}", 1))

            async def second_node_after_the_first_wave() -> None:
                await first_wave.wait()
                await node(1)  # short of leads at once, nothing in flight, and the retries not yet due

            await asyncio.wait_for(asyncio.gather(node(0), second_node_after_the_first_wave()), GUARD_S)  # hang guard
        finally:
            for s in stores:
                await s.close()

    asyncio.run(go())
    closed = [e for e in journal if e[0] == "finish" and e[2]]
    assert len(closed) == len(leads)  # every lead ran to its end
    assert len([e for e in journal if e[0] == "finish"]) == 2 * len(leads)  # two attempts each
    told_remain = {e[1] for e in journal[:journal.index(closed[0])] if e[0] == "check" and not e[2]}
    assert "n2" in told_remain, journal  # told "leads remain" before the end: the case at stake
    last_end = max(i for i, e in enumerate(journal) if e[0] == "finish")
    for node in ("n1", "n2"):
        mine = [e for e in journal if e[1] == node]
        assert mine[-1] == ("stopped", node, 1)
        assert [e for e in mine if e[0] == "check"][-1] == ("check", node, 1)  # stopped because none was left
        rounds_after = [e for e in journal[last_end:] if e[1] == node and e[0] == "claim"]
        assert len(rounds_after) <= 10, (node, journal[last_end:])
        claims = [e for e in mine if e[0] == "claim"]
        checks = [e for e in mine if e[0] == "check"]
        short = [e for e in claims if e[2] == 0]
        assert len(checks) < len(short) or len(short) <= 3, (node, len(checks), len(short))


def test_a_store_of_the_old_key_layout_is_refused_until_migrated(tmp_path: Path, redis_url: str) -> None:
    """The old layout (65,536 DNC buckets: tag = the blind index's top 16 bits, member = its bits 16..46),
    written as the old code wrote it; `dialer run` refuses it and names the fix, `dialer store migrate`
    converts it (a dry run first, then for real, then again as a no-op), and the numbers stay blocked."""
    from engine.pii import BlindIndex

    index = BlindIndex.from_env()
    cfg = campaign(tmp_path, redis_url, "legacy")
    listed = [number(i) for i in range(40)]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for p in listed:
        ix = index(p)
        client.sadd(f"legacy:{{n:{ix >> 47}}}:dnc", (ix >> 16) & ((1 << 31) - 1))
    before = sorted(client.scan_iter(match="legacy:*"))
    client.close()
    leads = write_leads(tmp_path, [(f"L{i}", number(i), _zone(12)) for i in range(35, 45)])

    refused = dialer("leads", "import", str(leads), "--campaign", str(cfg))
    assert refused.returncode == 1 and "dialer store migrate" in refused.stderr and "Traceback" not in refused.stderr
    run = dialer("run", str(cfg), "--realtime", "--quiet", "--json", "--results", str(tmp_path / "r"))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "legacy:{meta}:layout" in run.stderr and "layout 1" in run.stderr
    assert "dialer store migrate CAMPAIGN.toml" in run.stderr and "legacy:{n:" in run.stderr

    dry = dialer("store", "migrate", str(cfg), "--dry-run")
    assert dry.returncode == 0 and "would convert" in dry.stdout and "(40 entries)" in dry.stdout, dry.stderr
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert sorted(client.scan_iter(match="legacy:*")) == before  # a dry run writes nothing
    client.close()
    done = dialer("store", "migrate", str(cfg))
    assert done.returncode == 0 and "layout none -> 2: converted" in done.stdout, done.stderr
    again = dialer("store", "migrate", str(cfg))
    assert again.returncode == 0 and "nothing to migrate" in again.stdout, again.stderr

    assert store_call(lambda s: s.dnc_contains(listed), redis_url, "legacy") == [True] * 40
    assert dialer("leads", "import", str(leads), "--campaign", str(cfg)).returncode == 0
    node = start_node(cfg, "n1", tmp_path / "results")
    wait_for([node], lambda: counts(redis_url, "legacy")[1] is None)
    finish(node)
    dialled = {r["lead_id"] for r in store_call(lambda s: s.results("shared"), redis_url, "legacy")}
    blocked = {b["lead_id"] for b in store_call(lambda s: s.blocks("shared"), redis_url, "legacy")}
    assert blocked == {f"L{i}" for i in range(35, 40)} and not dialled & blocked
    idle = dialer("store", "calls", str(cfg))
    assert idle.returncode == 0 and "campaign shared: no call in progress" in idle.stdout, idle.stderr
