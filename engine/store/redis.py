"""The Redis store: campaign state shared by every engine node of a deployment.

Same contract as ``engine.store.memory.MemoryStore`` (the contract tests run
both), built so that several nodes can share a campaign and a Redis Cluster can
hold it.

Key layout and slots
--------------------
Every key starts with the deployment prefix and carries exactly one hash tag:

``<prefix>:{c:<campaign>}:...``
    per campaign: lead records (``lead:<id>``), the number→lead map (``num``),
    the ready queues per tier and time zone (``rdy:<tier>:<zone>``, score = -lead
    score; the zone is the lead's own, ``""`` for none, also in its record as ``z``),
    the zones of each tier's queues (``rz:<tier>``), the tiers (``tiers``), the waiting
    queue (``wait``: not yet eligible, or leased until), ``due`` (next time each
    open lead can be handed out), status ``counts``, the results stream
    (``res``), the blocks stream (``blk``), each lead's history (``hist:<id>``),
    abandon/live minute buckets (``ab:<utc day>``: one hash per campaign and UTC
    day, fields ``a<minute>``/``l<minute>`` plus day totals ``A``/``L``, so a
    day expires as a whole after 31 days with no trimming pass, and a 30-day
    window reads 29 day totals and two partial days, exact to the minute) and
    per-call idempotence marks (``done:<call>``).
``<prefix>:{n:<bucket>}:...``
    per number, where ``bucket`` is the top 12 bits of the number's blind index:
    the global DNC set of that bucket (``dnc``), each campaign's DNC set of that
    bucket (``dnc:<campaign>``), the invalid-number set (``inv``), and the
    number's own keys: in-flight lock (``lock:<ix>``), calls per local day
    (``day:<ix>:<date>``), calls in the last 24 h (``r24:<ix>``), last abandon
    (``abn:<ix>``).

``<prefix>:{meta}:layout``
    the key layout the deployment's data is written under (see "Layout versions"),
    and ``<prefix>:{meta}:migration`` while a migration runs.

The per-number state is tagged by the *DNC bucket* of the number, not by the
number itself: the reservation script must read the DNC sets and update the
number's counters atomically, and that is only possible if they share a slot.
4,096 tags spread evenly over the 16,384 cluster slots. Per-contact caps are
global (across campaigns), so none of that state can live under a campaign tag.

A reservation therefore takes two scripts, each within one slot: the atomic
decision (one Lua script in the number's slot: DNC global and campaign,
invalid, in-flight lock, per-day and 24 h caps, the lifetime cap on the claimed
lead's count, then lock and count), and the lead's bookkeeping (campaign slot:
the stored attempt count re-checked against the lifetime cap and against the
claimed copy's count, attempts + 1, in call, lease dropped). The number lock
is what serialises attempts on a number (and so on a lead), the lead's count
what admits one reservation per claim.

The engine decides dials in bursts (``dial_contexts``, ``reserve_attempts``): a
burst's reads are one script per number and one per campaign (the histories),
in one pipeline. Its reservations send both halves side by side in one
pipeline -- every call's number script, and one lead script per campaign for
all its calls -- and a call is reserved when both halves pass. Where only one
passed (rare after the gate), it is undone in a second round trip: the number's
lock and counts (``unreserve``), or the lead's count and state, restored from
what the lead script saved (``unreserved``). Both halves are needed, each admits
one attempt at a time, so this is never a double dial; a crash before an undo
leaves a counted number or a held lead, never a dialled one. A burst of any size
costs one round trip to read and one to reserve, and about two commands per
dial (redis-py's cost is per command).

``finish_attempt`` is likewise two scripts, each idempotent (a per-call mark),
so the engine may retry it after a connection loss without counting anything
twice.

Nodes that die or stall
-----------------------
A lead is claimed under a lease (``lu``, and queued in ``wait`` at that time);
a lease that lapses puts the lead back in the queue at the next claim. The
stored attempt count is the claim's version: a node whose lease lapsed while it
was still deciding (a long preview) is refused at reservation (``lease_lost``)
if another node dialled the lead meanwhile, and its release is ignored, so the
same attempt is never dialled twice and a closed lead is never revived.

A reserved lead is ``in_call`` and stays queued in ``wait`` until its number
lock's expiry (``Caps.lock_s``: ring timeout plus the longest call, since the
PBX may carry the call on after its node died). A normal finish takes it out.
If the expiry passes first, the next claim writes the attempt's result row once
as lost (outcome ``unknown``, prepared at reservation; the per-call mark then
turns a very late finish into a no-op) and hands the lead out again for its next
attempt: the lost one stays counted. ``due`` (what ``next_eligible_at`` reads)
does not hold leads in a call, so the surviving nodes' run can end without
waiting hours for a dead node's calls; a later run picks those leads up.

Scripts that touch lead records build those keys inside the script from the
campaign's tag (they are not all known up front); they always share the
campaign's slot, which is what Redis Cluster checks. ``redis+cluster://`` URLs
use redis-py's cluster client; the whole store runs on a real three-primary
cluster in the tests (bulk DNC loads then use plain SADD, as redis-py does not
pipeline EVALSHA in cluster mode).

DNC at scale
------------
A number's blind index is 63 bits. Its top 12 bits choose the bucket (one Redis
set), and the next 31 bits are the member: a non-negative 32-bit integer, so each
set is an *intset*, a sorted array of 4-byte entries (binary search for
SISMEMBER/SMISMEMBER, one memmove per insert). A million numbers make 4,096 sets
of about 244 members: 4.5 MiB in all, of which 3.8 MiB is the members themselves
and the rest per-key overhead and allocator rounding (with 65,536 sets of 15,
the per-key overhead doubled it). Dropping the low 20 bits can only make two
numbers look alike, which blocks a dial, never allows one (fail safe): a number
not on the list is blocked with odds of about 1 in 9 million for every million
numbers listed (n / 2^43). The same encoding serves the invalid-number sets.

A set stays an intset while it holds at most ``set-max-intset-entries`` members
(default 512): the default holds about 1.8 M numbers before the fullest buckets
convert to hash tables (some ten times the memory per member). For a larger list,
raise it above the fullest bucket (4096 holds 10 M numbers: about 2,440 a bucket,
some 2,620 in the fullest); ``load_dnc_file`` logs a warning with a figure (twice
the fullest bucket, as a power of two) when a bucket outgrows the server's setting.

Claim order by zone
-------------------
A claim may bring a bonus per zone (``claim_leads(zone_bonus=...)``: the best time to call, see
``engine.hooks.dialer_claim_order``): a lead's effective key is its score plus its zone's bonus. The bonus
is the same for a whole (tier, zone) queue, so each queue stays in effective-key order and the claim
script merges their heads (ties by lead id, byte order, as one sorted set orders them): exactly the order
of the tier's ready leads sorted by effective key, and with no bonus exactly the order one queue per tier
gave. The bonuses travel as script arguments: still one round trip. A tier with one zone is popped as
before (``ZPOPMIN``); with several, each queue's head is read ahead a chunk at a time (``CLAIM_CHUNK``)
and what was taken removed with one ``ZREM`` per chunk, so a merge costs a few commands per queue, not
per lead, plus the merge itself in Lua (linear in the tier's zones per lead handed out).

Layout versions
---------------
Layout 1 (before 447a927) had 65,536 buckets: tag = the index's top 16 bits, member = bits 16..46.
Layout 2 has 4,096: tag = the top 12 bits, member = bits 20..50. Bucket tags 0..4,095 name keys in both,
so the data alone cannot always say which layout wrote it: the layout key does. Layout 3 (this one) keeps
layout 2's buckets and splits each ready queue per tier (``rdy:<tier>``) into one per tier and zone (see
above); read as layout 3, a layout-2 ready lead would never be claimed. A store is checked before its
first layout-dependent read or write (``check_layout``): with no layout key, no campaign and no sign of
layout 1 (a tag past 4,095, a number's key under its 16-bit tag) it is marked as layout 3, otherwise
refused (``StoreLayoutError``) until ``migrate_layout`` (``dialer store migrate``) converts it:
``migrate_member`` maps each old DNC entry without knowing the number, as both keep contiguous index
bits; ``_LAYOUT_QUEUES`` gives each lead its zone and moves it to its (tier, zone) queue if it was ready.

Time
----
Times are the engine's (wall clock, possibly virtual); the store never reads a
clock. The *network* timeouts, though, run on the event loop's clock, so this
store needs a real-time loop: under ``simulations.vloop.VirtualTimeLoop`` the
clock jumps ahead while a reply is on its way and requests time out spuriously.

Redis TTLs are only garbage collection, always longer than the rule they serve:
locks expire ``lock_s`` + 60 s after being taken, day counters after 2 days,
24 h sets after 25 h, last-abandon marks after 8 days, abandon buckets after 32
days (windows are at most 31 days), call marks after 2 days (a write retried
after a connection loss comes back well within that). Lead records, results and
blocks are campaign data and have no TTL.

Failures
--------
Every method raises ``StoreUnavailable`` on a connection error, a timeout, or a
server that cannot serve (loading, read-only replica, cluster down): sockets
have short timeouts and every call an overall deadline, so nothing hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import string
import sys
from array import array
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.crypto import FieldCipher
from engine.models import CallAttempt, CallResult, Lead, Veto
from engine.pii import BlindIndex
from engine.privacy import ENCRYPTED_ATTRIBUTES
from engine.store.base import (
    AbandonCounts,
    Caps,
    DialContext,
    Reservation,
    StoreUnavailable,
    abandon_bucket,
    lead_zone,
    lost_row,
)

try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency; without it redis-py packs commands itself
    _hiredis_pack = None

log = structlog.get_logger("engine.store.redis")

_DAY = 86_400.0
BUCKET_BITS = 12  # DNC buckets: 2^12 sets, a few hundred members each per million numbers
MEMBER_BITS = 31  # intset members are non-negative int32: 4 bytes each
_MEMBER_SHIFT = 63 - BUCKET_BITS - MEMBER_BITS
_MEMBER_MASK = (1 << MEMBER_BITS) - 1
INTSET_ENTRIES_DEFAULT = 512  # redis.conf set-max-intset-entries
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_UNAVAILABLE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY")
_MINUTES_PER_DAY = 1440

LOCK_SLACK_S = 60
DAY_TTL_S = 2 * 86_400
R24_TTL_S = 25 * 3600
ABANDON_MARK_TTL_S = 8 * 86_400
BUCKET_TTL_S = 32 * 86_400
CALL_MARK_TTL_S = 2 * 86_400
WARM_CONNECTIONS = 8  # opened before a campaign starts: a burst's round trip, the finishes, the claim
CLAIM_CHUNK = 16  # a claim merging zone queues reads each one's head this many leads at a time
MAX_WINDOW_DAYS = 40  # abandon_counts reads at most this many days back (buckets expire after 32)

# Key layout versions (``<prefix>:{meta}:layout``). Layout 1: 2^16 number buckets (tag = the index's top
# 16 bits, DNC/invalid member = its bits 16..46). Layout 2: 2^12 buckets (top 12 bits; member = bits 20..50).
# Layout 3: layout 2's buckets, and ready queues per (tier, zone) (``rdy:<tier>:<zone>``, zones of a tier in
# ``rz:<tier>``, each lead's zone in its record's ``z``) where layout 2 had one per tier (``rdy:<tier>``).
LAYOUT_VERSION = 3
BUCKETS_LAYOUT = 2  # the first layout with 2^12 number buckets
OLD_BUCKET_BITS = 16
_OLD_MEMBER_SHIFT = 63 - OLD_BUCKET_BITS - MEMBER_BITS
_SET_SUFFIX = re.compile(r"^(dnc|dnc:.+|inv)$")  # the bucketed integer sets (DNC global / campaign, invalid)
_NUMBER_KEY = re.compile(r"^(?:lock|r24|abn|day):(\d+)(?::.*)?$")  # one number's own keys: the index is in the name
_SWITCH_BATCH = 1000
_OLD_QUEUE = re.compile(r"^\{c:(.*)\}:rdy:(-?\d+)$")  # a layout-2 ready queue (one per tier), after the prefix


def bucket_of(ix: int) -> int:
    """The DNC bucket (and per-number hash tag) of a blind index."""
    return ix >> (63 - BUCKET_BITS)


def member_of(ix: int) -> int:
    """The 31-bit intset member standing for a blind index inside its bucket (the index's next 31 bits)."""
    return (ix >> _MEMBER_SHIFT) & _MEMBER_MASK


def migrate_member(old_bucket: int, old_member: int) -> tuple[int, int]:
    """A layout-1 DNC/invalid entry (bucket = index bits 47..62, member = bits 16..46) as its layout-2
    (bucket, member) (bits 51..62, bits 20..50). Both layouts keep contiguous bits of the index, so the
    conversion needs no number: the new bucket is the old one's top 12 bits, the new member the old
    bucket's low 4 bits above the old member's top 27 (its low 4 bits are dropped, as layout 2 keeps 20
    fewer bits of the index: only more numbers can look alike, which blocks, never allows, a dial)."""
    extra = OLD_BUCKET_BITS - BUCKET_BITS
    return (old_bucket >> extra,
            ((old_bucket & ((1 << extra) - 1)) << (MEMBER_BITS - extra)) | (old_member >> extra))


# -- Lua -----------------------------------------------------------------------------------


def _lua(source: str, **constants: int) -> str:
    """A script with ``$name`` constants filled in (Lua itself never uses ``$``)."""
    return string.Template(source).substitute(constants)


# Shared by the campaign scripts: move a lead to pending (queued at ``ne``) or done.
_RESCHEDULE = """
local function set_status(t, old, new)
  if old ~= new then
    redis.call('HINCRBY', t .. 'counts', old, -1)
    redis.call('HINCRBY', t .. 'counts', new, 1)
  end
end
local function reschedule(t, lead_id, ne)
  local lk = t .. 'lead:' .. lead_id
  local st = redis.call('HGET', lk, 'st')
  if not st then return end
  local q = redis.call('HMGET', lk, 'tier', 'z')
  redis.call('ZREM', t .. 'rdy:' .. q[1] .. ':' .. (q[2] or ''), lead_id)
  redis.call('HDEL', lk, 'lu', 'node', 'call', 'lost', 'pst', 'plu', 'pnode')
  if ne == '' then
    redis.call('HSET', lk, 'st', 'done')
    redis.call('ZREM', t .. 'wait', lead_id)
    redis.call('ZREM', t .. 'due', lead_id)
    set_status(t, st, 'done')
  else
    redis.call('HSET', lk, 'st', 'pending', 'ne', ne)
    redis.call('ZADD', t .. 'wait', ne, lead_id)
    redis.call('ZADD', t .. 'due', ne, lead_id)
    set_status(t, st, 'pending')
  end
end
"""

# KEYS: campaign keys used (num, counts, tiers, wait, due); ARGV[1] = campaign tag prefix,
# then 10 values per lead: id, ix, blob, tier, score, -score, attempts, next_eligible, status, zone
_ADD_LEADS = _RESCHEDULE + """
local t = ARGV[1]
local new = 0
for i = 2, #ARGV, 10 do
  local id, ix, blob, tier, score, neg, att, ne, st, z =
    ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+7], ARGV[i+8], ARGV[i+9]
  local existing = redis.call('HGET', t .. 'num', ix)
  redis.call('SADD', t .. 'tiers', tier)
  redis.call('SADD', t .. 'rz:' .. tier, z)
  if existing then
    local lk = t .. 'lead:' .. existing
    local old = redis.call('HMGET', lk, 'tier', 'z')
    local cur = redis.call('HGET', lk, 'st')
    redis.call('HSET', lk, 'd', blob, 'tier', tier, 'score', score, 'neg', neg, 'z', z)
    if cur == 'pending' then
      redis.call('ZREM', t .. 'rdy:' .. old[1] .. ':' .. (old[2] or ''), existing)
      local cne = redis.call('HGET', lk, 'ne')
      if tonumber(cne) <= 0 then
        redis.call('ZADD', t .. 'rdy:' .. tier .. ':' .. z, neg, existing)
      else
        redis.call('ZADD', t .. 'wait', cne, existing)
      end
    end
  else
    local lk = t .. 'lead:' .. id
    if redis.call('EXISTS', lk) == 1 then
      return redis.error_reply('DUPLICATE_LEAD_ID ' .. id)
    end
    redis.call('HSET', lk, 'd', blob, 'ix', ix, 'tier', tier, 'score', score, 'neg', neg,
               'att', att, 'ne', ne, 'st', st, 'z', z)
    redis.call('HSET', t .. 'num', ix, id)
    redis.call('HINCRBY', t .. 'counts', st, 1)
    if st == 'pending' then
      redis.call('ZADD', t .. 'due', ne, id)
      if tonumber(ne) <= 0 then
        redis.call('ZADD', t .. 'rdy:' .. tier .. ':' .. z, neg, id)
      else
        redis.call('ZADD', t .. 'wait', ne, id)
      end
    end
    new = new + 1
  end
end
return new
"""

# KEYS: wait, due, tiers, counts; ARGV: tag prefix, now, n, lease_until, node, tiers ('*' = all, else ',a,b,'),
# then (zone, bonus) pairs: the claim order's bonus per zone (0 for a zone not given; see ``claim_leads``)
_CLAIM = _RESCHEDULE + _lua("""
local t, now, n, lu, node, only = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local bonus = {}
for i = 7, #ARGV, 2 do bonus[ARGV[i]] = tonumber(ARGV[i + 1]) end
-- promote: leases that lapsed come back, waiting leads that came due become ready
local due = redis.call('ZRANGEBYSCORE', t .. 'wait', '-inf', ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZREM', t .. 'wait', id)
  local lk = t .. 'lead:' .. id
  local f = redis.call('HMGET', lk, 'st', 'lu', 'ne', 'tier', 'neg', 'call', 'lost', 'z')
  local st = f[1]
  if st == 'leased' and tonumber(f[2] or '0') <= now then
    redis.call('HSET', lk, 'st', 'pending')
    redis.call('HDEL', lk, 'lu', 'node')
    redis.call('ZADD', t .. 'due', f[3], id)
    set_status(t, 'leased', 'pending')
    st = 'pending'
  elseif st == 'in_call' and tonumber(f[2] or '0') <= now then
    -- the node that reserved this attempt never finished it and its number lock has lapsed: the
    -- attempt is recorded once as lost (outcome unknown; a late finish is then ignored) and the
    -- lead comes back for its next attempt (the lost one stays counted)
    if f[6] and f[7] and redis.call('SET', t .. 'done:' .. f[6], '1', 'NX', 'EX', $mark_ttl) then
      redis.call('XADD', t .. 'res', '*', 'r', f[7])
      redis.call('RPUSH', t .. 'hist:' .. id, f[7])
    end
    redis.call('HSET', lk, 'st', 'pending', 'ne', ARGV[2])
    redis.call('HDEL', lk, 'lu', 'node', 'call', 'lost', 'pst', 'plu', 'pnode')
    redis.call('ZADD', t .. 'due', ARGV[2], id)
    set_status(t, 'in_call', 'pending')
    st = 'pending'
    f[3] = ARGV[2]
  end
  if st == 'pending' and tonumber(f[3]) <= now then
    redis.call('ZADD', t .. 'rdy:' .. f[4] .. ':' .. (f[8] or ''), f[5], id)
  end
end
local out = {}
local got = 0
-- lease the lead just taken from the (tier, zone) queue; a lead re-tiered or re-zoned since it was
-- queued goes where it belongs instead (returned when that is another zone of this tier)
local function take(id, tier, zone)
  local lk = t .. 'lead:' .. id
  local f = redis.call('HMGET', lk, 'st', 'ne', 'tier', 'neg', 'd', 'score', 'att', 'ix', 'z')
  if f[1] ~= 'pending' or tonumber(f[2]) > now then return nil end
  local z = f[9] or ''
  if f[3] ~= tier or z ~= zone then
    redis.call('ZADD', t .. 'rdy:' .. f[3] .. ':' .. z, f[4], id)
    if f[3] == tier then return z end
    return nil
  end
  redis.call('HSET', lk, 'st', 'leased', 'lu', lu, 'node', node)
  redis.call('ZADD', t .. 'wait', lu, id)
  redis.call('ZADD', t .. 'due', lu, id)
  set_status(t, 'pending', 'leased')
  got = got + 1
  table.insert(out, id)
  table.insert(out, f[5])
  table.insert(out, f[3])
  table.insert(out, f[6])
  table.insert(out, f[7])
  table.insert(out, f[2])
  table.insert(out, f[8])
  return nil
end
-- byte order, as Redis orders the members of equal score (Lua's own '<' on strings follows the server's
-- locale). Only ties need it; each id is read once into numbers of 6 bytes (base 257, 0 past the end,
-- so that a prefix comes first), exact in a double, compared a number at a time.
local packed = {}
local function pack(id)
  local v = packed[id]
  if v == nil then
    v = {}
    local b = {string.byte(id, 1, -1)}
    for i = 1, #b, 6 do
      local x = 0
      for j = i, i + 5 do x = x * 257 + (b[j] and b[j] + 1 or 0) end
      v[#v + 1] = x
    end
    packed[id] = v
  end
  return v
end
local function before(a, b)
  local x, y = pack(a), pack(b)
  for i = 1, math.min(#x, #y) do
    if x[i] ~= y[i] then return x[i] < y[i] end
  end
  return #x < #y
end
-- A zone queue in a merge: its key, its bonus, a chunk of its head (ids and effective keys, -score -
-- bonus) read ahead, and the ids taken from that chunk, removed from the queue in one ZREM before the
-- next chunk is read (a few commands per chunk rather than two per lead).
local function refill(q, size)
  if #q.used > 0 then
    redis.call('ZREM', q.key, unpack(q.used))
    q.used = {}
  end
  q.ids, q.keys, q.i, q.more, q.k, q.id = {}, {}, 1, false, nil, nil
  local want = math.min(n - got, size or $chunk)
  if want <= 0 then return end
  local top = redis.call('ZRANGE', q.key, 0, want - 1, 'WITHSCORES')
  for j = 1, #top, 2 do
    q.ids[#q.ids + 1] = top[j]
    q.keys[#q.keys + 1] = tonumber(top[j + 1]) - q.bonus
  end
  q.more = #q.ids == want  -- a short chunk was the whole queue
  q.k, q.id = q.keys[1], q.ids[1]
end
local function queue(tier, z, size)
  local q = {key = t .. 'rdy:' .. tier .. ':' .. z, bonus = bonus[z] or 0, used = {}, zone = z}
  refill(q, size)
  return q
end
local tiers = redis.call('SMEMBERS', t .. 'tiers')
table.sort(tiers, function(a, b) return tonumber(a) < tonumber(b) end)
for _, tier in ipairs(tiers) do
  if got >= n then break end
  if only == '*' or string.find(only, ',' .. tier .. ',', 1, true) then
    local zones = redis.call('SMEMBERS', t .. 'rz:' .. tier)
    local merge = #zones > 1
    if #zones == 1 then
      -- one zone: its queue is the order, whatever its bonus
      local rk = t .. 'rdy:' .. tier .. ':' .. zones[1]
      while got < n do
        local top = redis.call('ZPOPMIN', rk)
        if #top == 0 then break end
        if take(top[1], tier, zones[1]) then
          merge = true  -- re-zoned: this tier has two queues now
          zones = redis.call('SMEMBERS', t .. 'rz:' .. tier)
          break
        end
      end
    end
    if merge then
      -- k-way merge of the zone queues on (effective key, id): each queue is in score order and its
      -- bonus is the same for all of it, so this is the order of the whole tier by effective score
      local qs, all = {}, {}  -- the queues with a head to offer; every queue of the merge, by zone
      local function offer(q)
        if q.k ~= nil and not q.on then
          q.on = true
          qs[#qs + 1] = q
        end
      end
      local first = math.max(4, math.ceil((n - got) / #zones))  -- the claim's share of each queue, to start
      for _, z in ipairs(zones) do
        all[z] = queue(tier, z, first)
        offer(all[z])
      end
      while got < n do
        local best, bk, bj = nil, nil, 0
        for j = 1, #qs do
          local q = qs[j]
          local k = q.k
          if bk == nil or k < bk or (k == bk and before(q.id, best.id)) then
            best, bk, bj = q, k, j
          end
        end
        if best == nil then break end
        local id = best.id
        best.used[#best.used + 1] = id
        best.i = best.i + 1
        best.k, best.id = best.keys[best.i], best.ids[best.i]
        local moved = take(id, tier, best.zone)
        if best.k == nil and best.more and got < n then refill(best) end
        if best.k == nil then  -- this queue is spent: out of the scan
          qs[bj] = qs[#qs]
          qs[#qs] = nil
          best.on = false
        end
        if moved then  -- queued anew in another zone of this tier: read that queue's head again
          local q = all[moved]
          if q == nil then
            q = queue(tier, moved, $chunk)
            all[moved] = q
          else
            refill(q)
          end
          offer(q)
        end
      end
      for _, q in pairs(all) do
        if #q.used > 0 then redis.call('ZREM', q.key, unpack(q.used)) end
      end
    end
  end
end
return out
""", mark_ttl=CALL_MARK_TTL_S, chunk=CLAIM_CHUNK)

# KEYS: dnc, campaign dnc, invalid, lock, day counter, 24 h set
# ARGV: member, now, per_day, per_24h, lifetime_reached, lock value, lock ttl ms, call id, 24 h cutoff
_RESERVE = _lua("""
local m, now = ARGV[1], tonumber(ARGV[2])
if redis.call('SISMEMBER', KEYS[1], m) == 1 or redis.call('SISMEMBER', KEYS[2], m) == 1 then return 'dnc' end
if redis.call('SISMEMBER', KEYS[3], m) == 1 then return 'invalid_number' end
local lock = redis.call('GET', KEYS[4])
if lock and tonumber(string.match(lock, '^(%S+)')) > now then return 'in_flight' end
if tonumber(redis.call('GET', KEYS[5]) or '0') >= tonumber(ARGV[3]) then return 'cap_per_day' end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', ARGV[9])
if redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[4]) then return 'cap_24h' end
if ARGV[5] == '1' then return 'cap_lifetime' end
redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[7])
redis.call('INCR', KEYS[5])
redis.call('EXPIRE', KEYS[5], $day_ttl)
redis.call('ZADD', KEYS[6], ARGV[2], ARGV[8])
redis.call('EXPIRE', KEYS[6], $r24_ttl)
return 'ok'
""", day_ttl=DAY_TTL_S, r24_ttl=R24_TTL_S)

# KEYS: wait, due, counts; ARGV: tag prefix, lifetime cap, node, lock expiry, then 4 values per call of
# the campaign (a burst's calls that passed the number's script, in order): lead id, attempts on the
# claimed copy, call id, the result row recorded should this attempt be lost.
# Returns per call the new attempt count, -1 for an unknown lead, -2 when the stored count is at the
# cap, -3 when the stored count moved since the claim (another node dialled the lead after a lapsed lease).
_RESERVED = _RESCHEDULE + """
local t, cap, node, lu = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local out = {}
for i = 5, #ARGV, 4 do
  local id = ARGV[i]
  local lk = t .. 'lead:' .. id
  local f = redis.call('HMGET', lk, 'st', 'att', 'tier', 'lu', 'node', 'z')
  local st = f[1]
  if not st then
    out[#out + 1] = -1
  elseif tonumber(f[2]) >= cap then
    out[#out + 1] = -2
  elseif tonumber(f[2]) ~= tonumber(ARGV[i + 1]) then
    out[#out + 1] = -3
  else
    out[#out + 1] = redis.call('HINCRBY', lk, 'att', 1)
    -- in a call: out of the queues, but held only as long as the number lock, so that a call whose
    -- node died comes back (see the claim script) instead of staying in a call forever
    redis.call('HSET', lk, 'st', 'in_call', 'lu', lu, 'call', ARGV[i + 2], 'node', node, 'lost', ARGV[i + 3],
               'pst', st, 'plu', f[4] or '', 'pnode', f[5] or '')
    redis.call('ZREM', t .. 'rdy:' .. f[3] .. ':' .. (f[6] or ''), id)
    redis.call('ZADD', t .. 'wait', lu, id)
    redis.call('ZREM', t .. 'due', id)
    set_status(t, st, 'in_call')
  end
end
return out
"""

# KEYS: wait, due, counts; ARGV: tag prefix, now, then 2 values per call: lead id, call id.
# Undoes the campaign half of a reservation whose number half was refused (they run side by side in one
# round trip): the attempt count given back and the lead as it was before (``pst``/``plu``/``pnode``,
# saved by the reservation): still leased to its holder, or pending, or closed. Only a lead still in
# this very call is touched: while it is, no other node can claim, reserve or release it.
_UNRESERVED = _RESCHEDULE + """
local t = ARGV[1]
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local lk = t .. 'lead:' .. id
  local f = redis.call('HMGET', lk, 'st', 'call', 'pst', 'plu', 'pnode', 'ne')
  if f[1] == 'in_call' and f[2] == ARGV[i + 1] then
    redis.call('HINCRBY', lk, 'att', -1)
    if f[3] == 'leased' and f[4] and f[4] ~= '' then
      redis.call('HSET', lk, 'st', 'leased', 'lu', f[4], 'node', f[5] or '')
      redis.call('HDEL', lk, 'call', 'lost', 'pst', 'plu', 'pnode')
      redis.call('ZADD', t .. 'wait', f[4], id)
      redis.call('ZADD', t .. 'due', f[4], id)
      set_status(t, 'in_call', 'leased')
    elseif f[3] == 'done' then
      reschedule(t, id, '')
    else
      reschedule(t, id, f[6] or ARGV[2])
    end
  end
end
return 1
"""

# KEYS: dnc, campaign dnc, invalid, lock, day counter, 24 h set, last abandon; ARGV: member, 24 h cutoff
# (exclusive, as ZCOUNT reads it). What the pre-dial hooks need about one number, in one reply.
_CONTEXT = """
local m = ARGV[1]
return {redis.call('SISMEMBER', KEYS[1], m), redis.call('SISMEMBER', KEYS[2], m),
        redis.call('SISMEMBER', KEYS[3], m), redis.call('GET', KEYS[4]), redis.call('GET', KEYS[5]),
        redis.call('ZCOUNT', KEYS[6], ARGV[2], '+inf'), redis.call('GET', KEYS[7])}
"""

# KEYS: counts (the campaign's slot); ARGV: tag prefix, then lead ids. Each lead's history, in order.
_HISTORY = """
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('LRANGE', ARGV[1] .. 'hist:' .. ARGV[i], 0, -1)
end
return out
"""

# KEYS: lock, day counter, 24 h set; ARGV: call id. Undoes the number half of a reservation (the lead's
# own count refused it, or the gate did): only while the number is still locked by this very call, so a
# call already finished (its lock freed, its count kept) is left as it is.
_UNRESERVE = """
local lock = redis.call('GET', KEYS[1])
if not (lock and string.match(lock, '^%S+ (.*)') == ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: call mark, results, history, abandon day hash, wait, due, counts
# ARGV: tag prefix, lead id, row, next eligible ('' = done), live, abandoned, bucket
_FINISH_CAMPAIGN = _RESCHEDULE + _lua("""
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', $mark_ttl) then return 0 end
redis.call('XADD', KEYS[2], '*', 'r', ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[3])
if ARGV[5] == '1' then
  redis.call('HINCRBY', KEYS[4], 'l' .. ARGV[7], 1)
  redis.call('HINCRBY', KEYS[4], 'L', 1)
  if ARGV[6] == '1' then
    redis.call('HINCRBY', KEYS[4], 'a' .. ARGV[7], 1)
    redis.call('HINCRBY', KEYS[4], 'A', 1)
  end
  redis.call('EXPIRE', KEYS[4], $bucket_ttl)
end
reschedule(ARGV[1], ARGV[2], ARGV[4])
return 1
""", mark_ttl=CALL_MARK_TTL_S, bucket_ttl=BUCKET_TTL_S)

# KEYS: lock, invalid set, last-abandon mark; ARGV: call id, abandoned, now, invalid, member
_FINISH_NUMBER = _lua("""
local lock = redis.call('GET', KEYS[1])
if lock and string.match(lock, '^%S+ (.*)') == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[2] == '1' then redis.call('SET', KEYS[3], ARGV[3], 'EX', $abn_ttl) end
if ARGV[4] == '1' then redis.call('SADD', KEYS[2], ARGV[5]) end
return 1
""", abn_ttl=ABANDON_MARK_TTL_S)

# KEYS: wait, due, counts; ARGV: tag prefix, lead id, next eligible ('' = done), attempts on the claimed copy
# Only a lead not dialled since this claim is given back: a stale holder (its lease lapsed and another
# node dialled or closed the lead since) must not revive a closed lead nor unhook a call.
_RELEASE = _RESCHEDULE + """
local f = redis.call('HMGET', ARGV[1] .. 'lead:' .. ARGV[2], 'st', 'att')
if (f[1] ~= 'leased' and f[1] ~= 'pending') or tonumber(f[2]) ~= tonumber(ARGV[4]) then return 0 end
reschedule(ARGV[1], ARGV[2], ARGV[3])
return 1
"""

# KEYS: the day hashes, oldest first; ARGV: first bucket, last bucket, then each key's day number
_ABANDON_COUNTS = _lua("""
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
local a, l = 0, 0
for i, key in ipairs(KEYS) do
  local day = tonumber(ARGV[i + 2])
  if day * $mpd >= first and (day + 1) * $mpd - 1 <= last then
    a = a + tonumber(redis.call('HGET', key, 'A') or '0')
    l = l + tonumber(redis.call('HGET', key, 'L') or '0')
  else
    local flat = redis.call('HGETALL', key)
    for j = 1, #flat, 2 do
      local f = flat[j]
      local kind = string.sub(f, 1, 1)
      if kind == 'a' or kind == 'l' then
        local b = tonumber(string.sub(f, 2))
        if b >= first and b <= last then
          if kind == 'a' then a = a + tonumber(flat[j + 1]) else l = l + tonumber(flat[j + 1]) end
        end
      end
    end
  end
end
return {a, l}
""", mpd=_MINUTES_PER_DAY)

# KEYS: one DNC bucket; ARGV[1]: members packed as little-endian 32-bit integers (cheap to send in bulk)
_DNC_ADD = """
local packed = ARGV[1]
local added, batch = 0, {}
for pos = 1, #packed, 4 do
  batch[#batch + 1] = struct.unpack('<I4', packed, pos)
  if #batch == 1000 then
    added = added + redis.call('SADD', KEYS[1], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then added = added + redis.call('SADD', KEYS[1], unpack(batch)) end
return added
"""

# KEYS: lead key; ARGV: old token, new token
_REENCRYPT = """
local d = redis.call('HGET', KEYS[1], 'd')
if d ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[2])
return 1
"""

# The scripts a burst or a call's finish sends several of at a time, run by the batch script in one command.
_BATCHED = ("context", "history", "reserve", "reserved", "unreserve", "unreserved", "finish_campaign",
            "finish_number")


def _batch_script(scripts: dict[str, str]) -> str:
    """One script that runs several of the others in order, each as it runs alone (its own KEYS and
    ARGV), and returns their replies as a list: on a single Redis a burst's 2n + 2 scripts become one
    command. Each is wrapped as a function of (KEYS, ARGV); ``_RESCHEDULE``'s helpers are defined once.
    ARGV: per run its name, the number of its keys and of its arguments, then the keys and arguments.
    A run's ``return`` ends that run only. A Lua error ends the whole batch, as it would have ended
    that run (what ran before it stays done, as in a pipeline)."""
    parts = [_RESCHEDULE, "local run = {}"]
    for name in _BATCHED:
        body = scripts[name].removeprefix(_RESCHEDULE)
        parts.append(f"run[{name!r}] = function(KEYS, ARGV)\n{body}\nend")
    parts.append("""
local out, i, n = {}, 1, #ARGV
while i <= n do
  local f, nk, na = run[ARGV[i]], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local k, a = {}, {}
  for j = 1, nk do k[j] = ARGV[i + 2 + j] end
  for j = 1, na do a[j] = ARGV[i + 2 + nk + j] end
  out[#out + 1] = f(k, a)
  i = i + 3 + nk + na
end
return out
""")
    return "\n".join(parts)


SCRIPTS = {
    "add_leads": _ADD_LEADS,
    "claim": _CLAIM,
    "reserve": _RESERVE,
    "reserved": _RESERVED,
    "context": _CONTEXT,
    "history": _HISTORY,
    "unreserve": _UNRESERVE,
    "unreserved": _UNRESERVED,
    "finish_campaign": _FINISH_CAMPAIGN,
    "finish_number": _FINISH_NUMBER,
    "release": _RELEASE,
    "abandon_counts": _ABANDON_COUNTS,
    "reencrypt": _REENCRYPT,
    "dnc_add": _DNC_ADD,
}
SCRIPTS["batch"] = _batch_script(SCRIPTS)


# KEYS: final set, its staged layout-2 copy, the bucket's done mark. Switches one set to layout 2, once:
# the staged copy replaces it (or, with nothing staged, the old set goes), and the mark says it is done so
# that a re-run after a crash never deletes a set already switched.
_LAYOUT_SWITCH = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RENAME', KEYS[2], KEYS[1])
else
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[3], '1')
return 1
"""


# KEYS: the campaign's tiers set; ARGV: tag prefix, then lead ids. Layout 2 -> 3 for these leads, once each
# (a re-run finds nothing left to do): the record gets its zone (``z``, from the time zone in its data; ""
# for none), the zone joins its tier's zone set, and a lead in a layout-2 ready queue (``rdy:<tier>``, any
# tier: the old claim moved a lead queued under a stale tier too) is queued in its (tier, zone) queue.
_LAYOUT_QUEUES = """
local t = ARGV[1]
local tiers = redis.call('SMEMBERS', KEYS[1])
local moved = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local lk = t .. 'lead:' .. id
  local f = redis.call('HMGET', lk, 'tier', 'neg', 'z', 'd')
  if f[1] then
    local z = f[3]
    if not z then
      local ok, d = pcall(cjson.decode, f[4] or '')
      z = ''
      if ok and type(d) == 'table' and type(d.tz) == 'string' then z = d.tz end
      redis.call('HSET', lk, 'z', z)
    end
    redis.call('SADD', t .. 'rz:' .. f[1], z)
    local queued = false
    for _, tier in ipairs(tiers) do
      if redis.call('ZREM', t .. 'rdy:' .. tier, id) == 1 then queued = true end
    end
    if queued then
      redis.call('ZADD', t .. 'rdy:' .. f[1] .. ':' .. z, f[2], id)
      moved = moved + 1
    end
  end
end
return moved
"""


class StoreLayoutError(Exception):
    """The store's data was written under an older key layout (or a migration is unfinished): reading
    it under the current one would miss DNC entries, so nothing is dialled until ``dialer store migrate``
    has converted it."""


@dataclass
class LayoutReport:
    """What ``RedisStore.migrate_layout`` found and did (or, dry, would do)."""

    layout_before: str  # the layout key's value ("none" when absent)
    state: str  # "current", "migrated", "stamped" (no old data: given the key), "would-stamp", "dry-run"
    old_sets: int = 0  # layout-1 DNC/invalid sets found
    entries: int = 0  # entries in them
    new_sets: int = 0  # layout-2 sets written (staged, then switched)
    number_keys: int = 0  # per-number keys (locks, caps, last abandon) moved to their layout-2 bucket
    removed: int = 0  # layout-1 keys and migration marks deleted at the end
    examples: list[str] = field(default_factory=list)  # a few of the old keys found
    resumed: bool = False  # an interrupted migration carried on at a later phase (``resumed_at``)
    resumed_at: str = ""  # "switch" (the DNC sets were copied) or "queue" (the DNC sets were done)
    buckets: bool = False  # the layout-1 DNC buckets were (or would be) converted
    campaigns: int = 0  # campaigns whose ready queues were (would be) split per zone (layout 2 -> 3)
    leads: int = 0  # lead records given their zone
    queued: int = 0  # ready leads moved from a per-tier queue to their (tier, zone) queue

    def summary(self) -> str:
        """One paragraph for the operator."""
        if self.state == "current":
            return f"key layout {LAYOUT_VERSION} already; nothing to migrate" + (
                f" (removed {self.removed} leftover layout-1 keys)" if self.removed else "")
        if self.state in ("stamped", "would-stamp"):
            done = "marked" if self.state == "stamped" else "would be marked (dry run: nothing written)"
            return f"no older layout's data found; nothing to migrate; the store {done} as key layout {LAYOUT_VERSION}"
        dry = self.state == "dry-run"
        verb = "would convert" if dry else "converted"
        parts = []
        if self.resumed:
            parts.append(f"{'would resume' if dry else 'resumed'} an interrupted migration at its {self.resumed_at} "
                         "phase")
        elif self.buckets:
            parts.append(f"layout {self.layout_before} -> {BUCKETS_LAYOUT}: {verb} {self.old_sets} DNC/invalid sets "
                         f"({self.entries} entries) into {self.new_sets} sets, and move {self.number_keys} "
                         "per-number keys")
        if not (self.resumed and dry):
            split = "would split" if dry else "split"
            parts.append(f"layout {BUCKETS_LAYOUT} -> {LAYOUT_VERSION}: {split} the ready queues of {self.campaigns} "
                         f"campaigns per time zone ({self.leads} leads, {self.queued} of them ready)")
        text = "; ".join(parts)
        if dry:
            examples = f"; e.g. {', '.join(self.examples[:3])}" if self.examples else ""
            return text + examples + ". Nothing was written."
        return text + f"; layout {LAYOUT_VERSION} now; removed {self.removed} layout-1 keys"


class _HiredisPacking:
    """Commands packed by hiredis, in C, byte for byte what redis-py's asyncio connections produce in
    Python (one copy of the growing buffer per argument: a burst's scripts carry hundreds of
    arguments, and packing was the largest part of a decision's client-side time)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # a command name may hold several words ("CONFIG GET"), as redis-py splits
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [_hiredis_pack(args)]


def _num(value: float) -> str:
    """A float as Redis and Lua read it back exactly."""
    return repr(float(value))


class RedisStore:
    """Redis implementation of ``engine.store.base.Store`` (see the module docstring for the layout)."""

    remote = True  # every call is a round trip: the Dialer reserves dials ahead (engine/hopper.py)

    def __init__(self, url: str, *, prefix: str = "dialer", index: BlindIndex | None = None,
                 cipher: FieldCipher | None = None, socket_timeout: float = 2.0,
                 connect_timeout: float = 1.0, op_timeout: float = 5.0, cluster: bool = False,
                 encrypted_attributes: Iterable[str] = ENCRYPTED_ATTRIBUTES, max_connections: int = 256) -> None:
        """``url``: ``redis://`` (one server) or ``redis+cluster://host:port`` (any node of a Redis
        Cluster; ``cluster=True`` says the same)."""
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", prefix):
            raise ValueError(f"key prefix {prefix!r}: only letters, digits and _ . : - (no hash tag braces)")
        self.prefix = prefix
        self._index = index or BlindIndex.from_env()
        self._cipher = cipher or FieldCipher.from_env()
        self._encrypted = frozenset(encrypted_attributes)
        self._op_timeout = op_timeout
        self.cluster = cluster or url.startswith("redis+cluster://")
        if self.cluster:
            self._redis: Any = RedisCluster.from_url(
                url.replace("redis+cluster://", "redis://", 1), decode_responses=True,
                socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
                retry=Retry(NoBackoff(), 1),
            )
        else:
            # A blocking pool: a burst of dials waits (within ``op_timeout``) for a free connection
            # instead of failing with MaxConnectionsError, which would read as "Redis unavailable"
            # and pause dialling. ``?max_connections=N`` in the URL overrides the size.
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=op_timeout, decode_responses=True,
                socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError], health_check_interval=30,
            )
            if _hiredis_pack is not None:  # whatever class the URL chose (TCP, TLS, unix socket), packing in C
                pool.connection_class = type(f"Packing{pool.connection_class.__name__}",
                                             (_HiredisPacking, pool.connection_class), {})
            self._redis = aioredis.Redis(connection_pool=pool)
        parsed = urlsplit(url)
        self._where = f"{parsed.hostname or parsed.path}:{parsed.port or ''}"  # never the password
        self._scripts = {name: self._redis.register_script(src) for name, src in SCRIPTS.items()}
        self._scripts["layout_switch"] = self._redis.register_script(_LAYOUT_SWITCH)  # `dialer store migrate` only
        self._scripts["layout_queues"] = self._redis.register_script(_LAYOUT_QUEUES)  # likewise
        self.script_calls: list[tuple[str, list[str], str | None]] | None = None  # set to a list to record
        self._layout_ok = False  # the key layout checked (``check_layout``): once per store object

    # -- keys ------------------------------------------------------------------------------

    def campaign_tag(self, campaign_id: str) -> str:
        """Prefix of every key of one campaign (ends with ':'); its hash tag fixes the slot."""
        return f"{self.prefix}:{{c:{campaign_id}}}:"

    def number_tag(self, ix: int) -> str:
        """Prefix of every key about numbers in ``ix``'s DNC bucket (ends with ':')."""
        return f"{self.prefix}:{{n:{bucket_of(ix)}}}:"

    # -- plumbing --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _guard(self, deadline: float | None = None) -> AsyncIterator[None]:
        """Connection trouble becomes StoreUnavailable, within a deadline."""
        try:
            async with asyncio.timeout(deadline if deadline is not None else self._op_timeout):
                yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # OSError covers TimeoutError
            raise StoreUnavailable(f"redis at {self._where}: {type(exc).__name__}: {exc}") from exc
        except ResponseError as exc:
            if str(exc).split(" ", 1)[0] in _UNAVAILABLE_REPLIES:
                raise StoreUnavailable(f"redis at {self._where} cannot serve: {exc}") from exc
            raise

    async def _run(self, name: str, keys: list[str], args: list[Any], tag: str | None = None) -> Any:
        """Run one script (inside the caller's ``_guard``). ``tag``: the prefix of keys the script builds
        itself (same slot as ``keys``)."""
        if self.script_calls is not None:
            self.script_calls.append((name, list(keys), tag))
        if self.cluster:
            return await self._scripts[name](keys=keys, args=args)
        return (await self._evalsha([(name, (keys, args))]))[0]

    async def _run_many(self, runs: list[tuple[str, tuple[list[str], list[Any]]]],
                        tagged: Collection[str] = ()) -> list[Any]:
        """Run scripts, ``(name, (keys, args))`` each, in one pipeline (one round trip); replies in
        order. Each run is as atomic as alone (a pipeline is not a transaction: nothing more is
        needed). Sent as EVALSHA with no ``SCRIPT EXISTS`` first (redis-py's pipelines send one on every
        execute); runs the server did not know the script of (a restart, a failover) are re-sent once
        it is loaded -- they did not run, so nothing is done twice. On a Redis Cluster, where redis-py
        does not pipeline scripts, the runs go concurrently. ``tagged``: the scripts whose first
        argument is the key tag they build their other keys from (``_run``'s ``tag``)."""
        if not runs:
            return []
        if self.script_calls is not None:
            self.script_calls.extend((name, list(keys), args[0] if name in tagged else None)
                                     for name, (keys, args) in runs)
        if self.cluster:
            return list(await asyncio.gather(*(self._scripts[name](keys=keys, args=args)
                                               for name, (keys, args) in runs)))
        if len(runs) > 1 and all(name in _BATCHED for name, _ in runs):
            # One command instead of one per run (``_batch_script``): the server parses, dispatches and
            # answers once, and the client reads one reply, where each command cost both sides a
            # fixed overhead that was most of a burst's time with few keys per script.
            flat: list[Any] = []
            for name, (keys, args) in runs:
                flat += [name, len(keys), len(args), *keys, *args]
            return list((await self._evalsha([("batch", ([], flat))]))[0])
        return await self._evalsha(runs)

    async def _evalsha(self, runs: Sequence[tuple[str, tuple[list[str], list[Any]]]]) -> list[Any]:
        """``EVALSHA`` for each run through the lean pipeline; the runs a server did not know the script
        of (``NOSCRIPT``: they did not run) sent again once it is loaded. An error reply is raised."""
        todo = list(range(len(runs)))
        replies: list[Any] = [None] * len(runs)
        for attempt in range(2):
            got = await self._pipeline([("EVALSHA", self._scripts[runs[i][0]].sha, len(runs[i][1][0]),
                                         *runs[i][1][0], *runs[i][1][1]) for i in todo])
            missing = []
            for i, reply in zip(todo, got, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    replies[i] = reply
            if not missing:
                break
            for name in dict.fromkeys(runs[i][0] for i in missing):
                await self._redis.script_load(self._scripts[name].script)
            todo = missing
        return replies

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands written at once on one connection and their replies read back in order, an error
        reply returned as its exception: a pipeline without redis-py's per-command layers (its command
        stack and argument checks, and a timeout context around every reply), which were about a third
        of a burst's client time (BENCHMARKS.md, Floods). The caller's ``_guard`` bounds the whole; a
        connection left with replies unread (an error, a cancellation) is closed, never reused."""
        pool = self._redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            out: list[Any] = []
            for _ in commands:
                try:
                    out.append(await conn.read_response(timeout=math.inf))  # inf: the caller's deadline only
                except ResponseError as exc:
                    out.append(exc)
            return out
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    def _blob(self, lead: Lead, ix: int) -> str:
        context = f"{lead.campaign_id}/{ix}"
        plain = {k: v for k, v in lead.attributes.items() if k not in self._encrypted}
        sealed = {k: self._cipher.encrypt(json.dumps(v, default=str), f"{context}/{k}")
                  for k, v in lead.attributes.items() if k in self._encrypted}
        return json.dumps({
            "p": self._cipher.encrypt(lead.phone, context),
            "tz": lead.timezone,
            "tags": list(lead.tags),
            "attrs": plain,
            "sa": sealed,
            "cs": lead.consent_source,
            "ce": lead.consent_expires.isoformat() if lead.consent_expires else None,
        }, separators=(",", ":"), default=str)

    def _lead(self, campaign_id: str, lead_id: str, blob: str, tier: str, score: str, attempts: str,
              next_eligible: str, ix: str, status: str) -> Lead:
        d = json.loads(blob)
        return Lead(
            lead_id=lead_id, campaign_id=campaign_id,
            phone=self._cipher.decrypt(d["p"], f"{campaign_id}/{ix}"),
            tier=int(tier), score=float(score), timezone=d.get("tz"), tags=tuple(d.get("tags") or ()),
            attributes={**(d.get("attrs") or {}),
                        **{k: json.loads(self._cipher.decrypt(token, f"{campaign_id}/{ix}/{k}"))
                           for k, token in (d.get("sa") or {}).items()}},
            consent_source=d.get("cs"),
            consent_expires=datetime.fromisoformat(d["ce"]) if d.get("ce") else None,
            attempts=int(attempts), next_eligible=float(next_eligible), status=status,
        )

    # -- leads -----------------------------------------------------------------------------

    async def add_leads(self, leads: Iterable[Lead], *, batch: int = 500) -> int:
        await self._ensure_layout()
        by_campaign: dict[str, list[Lead]] = defaultdict(list)
        for lead in leads:
            by_campaign[lead.campaign_id].append(lead)
        new = 0
        for cid, group in by_campaign.items():
            t = self.campaign_tag(cid)
            keys = [t + "num", t + "counts", t + "tiers", t + "wait", t + "due"]
            for i in range(0, len(group), batch):
                args: list[Any] = [t]
                for lead in group[i:i + batch]:
                    ix = self._index(lead.phone)
                    args += [lead.lead_id, str(ix), self._blob(lead, ix), str(int(lead.tier)),
                             _num(lead.score), _num(-lead.score), str(int(lead.attempts)),
                             _num(lead.next_eligible), lead.status, lead_zone(lead)]
                try:
                    async with self._guard():
                        new += int(await self._run("add_leads", keys, args, t))
                except ResponseError as exc:
                    if "DUPLICATE_LEAD_ID" in str(exc):
                        dup = str(exc).split("DUPLICATE_LEAD_ID ", 1)[-1]
                        raise ValueError(f"lead id {dup!r} already used for another number") from None
                    raise
        return new

    async def claim_leads(self, campaign_id: str, n: int, *, now: float, node_id: str,
                          lease_s: float, tiers: Collection[int] | None = None,
                          zone_bonus: Mapping[str, float] | None = None) -> list[Lead]:
        """One script, one round trip: the bonuses go along as arguments (only the non-zero ones) and
        the script merges the heads of the tier's zone queues (see ``Store.claim_leads``)."""
        if n <= 0:
            return []
        await self._ensure_layout()
        t = self.campaign_tag(campaign_id)
        only = "*" if tiers is None else "," + ",".join(str(int(x)) for x in tiers) + ","
        args: list[Any] = [t, _num(now), n, _num(now + lease_s), node_id, only]
        if zone_bonus:
            for zone, bonus in zone_bonus.items():
                if bonus:
                    args += [zone, _num(bonus)]
        async with self._guard():
            flat = await self._run("claim", [t + "wait", t + "due", t + "tiers", t + "counts"], args, t)
        return [self._lead(campaign_id, *flat[i:i + 7], "leased") for i in range(0, len(flat), 7)]

    async def release_lead(self, lead: Lead, *, now: float, next_eligible: float | None) -> None:
        t = self.campaign_tag(lead.campaign_id)
        async with self._guard():
            await self._run("release", [t + "wait", t + "due", t + "counts"],
                            [t, lead.lead_id, "" if next_eligible is None else _num(next_eligible), lead.attempts], t)

    # -- dialling --------------------------------------------------------------------------

    async def dial_context(self, lead: Lead, *, now: float, day_key: str) -> DialContext:
        return (await self.dial_contexts([lead], now=now, day_keys=[day_key]))[0]

    async def dial_contexts(self, leads: Sequence[Lead], *, now: float,
                            day_keys: Sequence[str]) -> list[DialContext]:
        """One round trip for a burst: a script per lead in its number's slot (DNC, invalid, lock, day
        and 24 h counts, last abandon) and one per campaign for the leads' histories, pipelined. Few
        commands matter more than few keys here: redis-py's cost is per command (packing, a reply
        read under its own timeout), and it was most of a decision's time under load."""
        if not leads:
            return []
        await self._ensure_layout()
        runs, by_campaign = self._context_runs(leads, now, day_keys)
        async with self._guard():
            replies = await self._run_many(runs, tagged=("history",))
        return self._contexts(leads, now, day_keys, replies, by_campaign)

    def _context_runs(self, leads: Sequence[Lead], now: float, day_keys: Sequence[str],
                      ) -> tuple[list[tuple[str, tuple[list[str], list[Any]]]], dict[str, list[int]]]:
        """The scripts of ``dial_contexts``: one per lead, then one per campaign (its leads' positions)."""
        cutoff = f"({_num(now - _DAY)}"
        numbers = []
        for lead, day_key in zip(leads, day_keys, strict=True):
            ix = self._index(lead.phone)
            n = self.number_tag(ix)
            numbers.append(([n + "dnc", n + f"dnc:{lead.campaign_id}", n + "inv", n + f"lock:{ix}",
                             n + f"day:{ix}:{day_key}", n + f"r24:{ix}", n + f"abn:{ix}"], [member_of(ix), cutoff]))
        by_campaign: dict[str, list[int]] = defaultdict(list)
        for i, lead in enumerate(leads):
            by_campaign[lead.campaign_id].append(i)
        histories = []
        for cid, positions in by_campaign.items():
            t = self.campaign_tag(cid)
            histories.append(([t + "counts"], [t, *(leads[i].lead_id for i in positions)]))
        return [("context", call) for call in numbers] + [("history", call) for call in histories], by_campaign

    @staticmethod
    def _contexts(leads: Sequence[Lead], now: float, day_keys: Sequence[str], replies: Sequence[Any],
                  by_campaign: dict[str, list[int]]) -> list[DialContext]:
        hist: list[Any] = [None] * len(leads)
        for positions, lists in zip(by_campaign.values(), replies[len(leads):], strict=True):
            for i, rows in zip(positions, lists, strict=True):
                hist[i] = rows
        out = []
        for lead, day_key, (dnc, cdnc, inv, lock, day, r24, abn), rows in zip(
                leads, day_keys, replies[:len(leads)], hist, strict=True):
            out.append(DialContext(
                lead=lead, now=now, day_key=day_key,
                attempts_today=int(day or 0), attempts_24h=int(r24),
                dnc=bool(dnc) or bool(cdnc), invalid_number=bool(inv),
                last_abandoned_at=float(abn) if abn is not None else None,
                in_flight=lock is not None and float(lock.split(" ", 1)[0]) > now,
                history=tuple(json.loads(h) for h in rows),
            ))
        return out

    async def reserve_attempt(self, call: CallAttempt, *, now: float, day_key: str, caps: Caps,
                              node_id: str) -> Reservation:
        res = (await self.reserve_attempts([call], now=now, day_keys=[day_key], caps=caps, node_id=node_id))[0]
        if res.rule == "unknown_lead":
            raise KeyError(f"unknown lead {call.lead.lead_id!r} in campaign {call.lead.campaign_id!r}")
        return res

    async def reserve_attempts(self, calls: Sequence[CallAttempt], *, now: float, day_keys: Sequence[str],
                               caps: Caps, node_id: str) -> list[Reservation]:
        """Each reservation has two halves, each an atomic script within one slot: the number's (DNC,
        invalid, in-flight lock, per-day and 24 h caps, the lifetime cap judged on the claimed copy; then
        lock and count) and the lead's (its stored count re-checked against the cap and the claimed
        copy's; then attempts + 1, in a call). A call is reserved when both pass. A burst sends every
        call's number half and one lead half per campaign, covering all its calls, in one pipeline: one
        round trip, however many calls. Where one half passed and the other refused (rare after the
        gate: a DNC entry or a cap the plugins did not see, a lapsed lease), the half that passed is
        undone in a second round trip. Never a double dial: the number lock admits one attempt at a
        time, the lead's count one reservation per claimed count, and a call needs both. The calls of
        a burst run in order, so a second call to a number the burst has just locked sees the lock."""
        if not calls:
            return []
        await self._ensure_layout()
        runs, by_campaign = self._reservation_runs(calls, now, day_keys, caps, node_id)
        async with self._guard():
            replies = await self._run_many(runs, tagged=("reserved", "unreserved"))
            return await self._settle(calls, now, day_keys, caps, replies, by_campaign)

    async def read_and_reserve(self, calls: Sequence[CallAttempt], *, now: float, day_keys: Sequence[str],
                               caps: Caps, node_id: str) -> tuple[list[DialContext], list[Reservation]]:
        """The scripts of ``dial_contexts`` and of ``reserve_attempts`` in one pipeline, contexts first:
        a connection's commands run in order, so every context is read before any of the burst's
        reservations (another client's command may still come between, as it may between two round
        trips). On a Redis Cluster the scripts go to several nodes at once, in no order: there the
        contexts are read first, then the reservations made, two round trips."""
        if not calls:
            return [], []
        leads = [call.lead for call in calls]
        if self.cluster:
            contexts = await self.dial_contexts(leads, now=now, day_keys=day_keys)
            return contexts, await self.reserve_attempts(calls, now=now, day_keys=day_keys, caps=caps, node_id=node_id)
        await self._ensure_layout()
        reads, read_campaigns = self._context_runs(leads, now, day_keys)
        runs, by_campaign = self._reservation_runs(calls, now, day_keys, caps, node_id)
        async with self._guard():
            replies = await self._run_many(reads + runs, tagged=("history", "reserved", "unreserved"))
            contexts = self._contexts(leads, now, day_keys, replies[:len(reads)], read_campaigns)
            return contexts, await self._settle(calls, now, day_keys, caps, replies[len(reads):], by_campaign)

    async def undo_reservations(self, calls: Sequence[CallAttempt], *, now: float,
                                day_keys: Sequence[str]) -> None:
        """Both halves given back in one round trip: ``_UNRESERVE`` (the lock only if it is still this
        call's) and ``_UNRESERVED`` (the lead only while it is still in this very call)."""
        if not calls:
            return
        await self._ensure_layout()
        runs: list[tuple[str, tuple[list[str], list[Any]]]] = [
            ("unreserve", self._unreserve_script(call, day_key)) for call, day_key in zip(calls, day_keys, strict=True)]
        by_campaign: dict[str, list[CallAttempt]] = defaultdict(list)
        for call in calls:
            by_campaign[call.campaign_id].append(call)
        for cid, mine in by_campaign.items():
            t = self.campaign_tag(cid)
            runs.append(("unreserved", ([t + "wait", t + "due", t + "counts"],
                                        [t, _num(now), *(x for c in mine for x in (c.lead.lead_id, c.call_id))])))
        async with self._guard():
            await self._run_many(runs, tagged=("reserved", "unreserved"))

    def _reservation_runs(self, calls: Sequence[CallAttempt], now: float, day_keys: Sequence[str], caps: Caps,
                          node_id: str) -> tuple[list[tuple[str, tuple[list[str], list[Any]]]], dict[str, list[int]]]:
        """The scripts of ``reserve_attempts``: each call's number half, then each campaign's lead half."""
        runs: list[tuple[str, tuple[list[str], list[Any]]]] = [
            ("reserve", self._number_script(call, now, day_key, caps))
            for call, day_key in zip(calls, day_keys, strict=True)]
        by_campaign: dict[str, list[int]] = defaultdict(list)
        for i, call in enumerate(calls):
            by_campaign[call.campaign_id].append(i)
        lu = _num(now + caps.lock_s)
        for cid, positions in by_campaign.items():
            t = self.campaign_tag(cid)
            args: list[Any] = [t, caps.lifetime, node_id, lu]
            for i in positions:
                call = calls[i]
                args += [call.lead.lead_id, call.lead.attempts, call.call_id,
                         json.dumps(lost_row(call, now), separators=(",", ":"))]
            runs.append(("reserved", ([t + "wait", t + "due", t + "counts"], args)))
        return runs, by_campaign

    async def _settle(self, calls: Sequence[CallAttempt], now: float, day_keys: Sequence[str], caps: Caps,
                      replies: Sequence[Any], by_campaign: dict[str, list[int]]) -> list[Reservation]:
        """Each call's verdict from both halves' replies; a half that passed where the other refused is
        undone (a second round trip, only then). Runs inside the caller's ``_guard``."""
        verdicts = replies[:len(calls)]
        counts: list[int] = [0] * len(calls)
        for positions, got in zip(by_campaign.values(), replies[len(calls):], strict=True):
            for i, c in zip(positions, got, strict=True):
                counts[i] = int(c)
        undo: list[tuple[str, tuple[list[str], list[Any]]]] = [
            ("unreserve", self._unreserve_script(calls[i], day_keys[i]))
            for i in range(len(calls)) if verdicts[i] == "ok" and counts[i] < 0]
        for cid, positions in by_campaign.items():
            back = [i for i in positions if verdicts[i] != "ok" and counts[i] >= 0]
            if back:
                t = self.campaign_tag(cid)
                undo.append(("unreserved", ([t + "wait", t + "due", t + "counts"], [
                    t, _num(now), *(x for i in back for x in (calls[i].lead.lead_id, calls[i].call_id))])))
        if undo:
            await self._run_many(undo, tagged=("reserved", "unreserved"))
        out = []
        for verdict, c, day_key in zip(verdicts, counts, day_keys, strict=True):
            if verdict != "ok":
                out.append(_refusal(str(verdict), caps, day_key))
            elif c < 0:
                out.append(_refusal({-1: "unknown_lead", -2: "cap_lifetime"}.get(c, "lease_lost"), caps, day_key))
            else:
                out.append(_RESERVED_OK)
        return out

    def _number_script(self, call: CallAttempt, now: float, day_key: str,
                       caps: Caps) -> tuple[list[str], list[Any]]:
        """Keys and arguments of a reservation's first script, in the number's slot."""
        lead = call.lead
        ix = self._index(lead.phone)
        n = self.number_tag(ix)
        return ([n + "dnc", n + f"dnc:{lead.campaign_id}", n + "inv", n + f"lock:{ix}", n + f"day:{ix}:{day_key}",
                 n + f"r24:{ix}"],
                [member_of(ix), _num(now), caps.per_day, caps.per_24h, "1" if lead.attempts >= caps.lifetime else "0",
                 f"{_num(now + caps.lock_s)} {call.call_id}", int((caps.lock_s + LOCK_SLACK_S) * 1000),
                 call.call_id, _num(now - _DAY)])

    def _unreserve_script(self, call: CallAttempt, day_key: str) -> tuple[list[str], list[Any]]:
        ix = self._index(call.lead.phone)
        n = self.number_tag(ix)
        return [n + f"lock:{ix}", n + f"day:{ix}:{day_key}", n + f"r24:{ix}"], [call.call_id]

    async def finish_attempt(self, call: CallAttempt, result: CallResult, *, now: float,
                             next_eligible: float | None, abandoned: bool, live: bool,
                             invalid_number: bool = False) -> None:
        await self._ensure_layout()
        lead = call.lead
        ix = self._index(lead.phone)
        n, t = self.number_tag(ix), self.campaign_tag(call.campaign_id)
        bucket = abandon_bucket(now)
        row = json.dumps(result.as_row(), separators=(",", ":"))
        # the campaign's half first: the number stays locked until the result is stored
        runs: list[tuple[str, tuple[list[str], list[Any]]]] = [
            ("finish_campaign", ([t + f"done:{call.call_id}", t + "res", t + f"hist:{lead.lead_id}",
                                  t + f"ab:{bucket // _MINUTES_PER_DAY}", t + "wait", t + "due", t + "counts"],
                                 [t, lead.lead_id, row, "" if next_eligible is None else _num(next_eligible),
                                  "1" if live else "0", "1" if abandoned and live else "0", bucket])),
            ("finish_number", ([n + f"lock:{ix}", n + "inv", n + f"abn:{ix}"],
                               [call.call_id, "1" if abandoned and live else "0", _num(now),
                                "1" if invalid_number else "0", member_of(ix)]))]
        async with self._guard():
            if self.cluster:  # two slots: one after the other
                for name, (keys, args) in runs:
                    await self._run(name, keys, args, t if name == "finish_campaign" else None)
            else:
                await self._run_many(runs, tagged=("finish_campaign",))

    async def record_block(self, campaign_id: str, lead: Lead, veto: Veto, *, now: float) -> None:
        row = json.dumps({"lead_id": lead.lead_id, "rule": veto.rule, "reason": veto.reason, "at": now},
                         separators=(",", ":"))
        async with self._guard():
            await self._redis.xadd(self.campaign_tag(campaign_id) + "blk", {"b": row})

    async def abandon_counts(self, campaign_id: str, *, since: float, now: float) -> AbandonCounts:
        first, last = abandon_bucket(since), abandon_bucket(now)
        if last < first:
            return AbandonCounts(0, 0)
        last_day = last // _MINUTES_PER_DAY
        first_day = max(first // _MINUTES_PER_DAY, last_day - MAX_WINDOW_DAYS)
        t = self.campaign_tag(campaign_id)
        days = list(range(first_day, last_day + 1))
        async with self._guard():
            a, live = await self._run("abandon_counts", [t + f"ab:{d}" for d in days], [first, last, *days])
        return AbandonCounts(int(a), int(live))

    # -- DNC -------------------------------------------------------------------------------

    def _dnc_key(self, ix: int, campaign_id: str | None) -> str:
        return self.number_tag(ix) + ("dnc" if campaign_id is None else f"dnc:{campaign_id}")

    async def add_dnc(self, phones: Iterable[str], campaign_id: str | None = None) -> int:
        return await self._add_indexes((self._index(p) for p in phones), campaign_id)

    async def _add_indexes(self, indexes: Iterable[int], campaign_id: str | None, chunk: int = 1_000_000) -> int:
        """SADD in bulk: members grouped per bucket, so a million numbers take 4,096 commands. Warns when
        a bucket outgrows ``set-max-intset-entries``: Redis then converts that set to a hash table, some
        ten times the memory per number (see the module docstring for the setting to use)."""
        await self._ensure_layout()
        added, batch, largest = 0, [], 0
        for ix in indexes:
            batch.append(ix)
            if len(batch) >= chunk:
                n, big = await self._sadd_batch(batch, campaign_id)
                added, largest, batch = added + n, max(largest, big), []
        if batch:
            n, big = await self._sadd_batch(batch, campaign_id)
            added, largest = added + n, max(largest, big)
        limit = await self._intset_limit()
        if largest > limit:
            log.warning("dnc bucket larger than set-max-intset-entries: those sets lose the compact encoding",
                        largest=largest, limit=limit, advice=f"CONFIG SET set-max-intset-entries {_pow2(largest * 2)}")
        return added

    async def _intset_limit(self) -> int:
        """The server's ``set-max-intset-entries``; the default when CONFIG is not allowed (managed Redis)."""
        try:
            async with self._guard():
                reply = await self._redis.config_get("set-max-intset-entries")
        except (ResponseError, StoreUnavailable):
            return INTSET_ENTRIES_DEFAULT
        values = reply.values() if isinstance(reply, dict) else ()
        return min((int(v) for v in values if str(v).isdigit()), default=INTSET_ENTRIES_DEFAULT)

    async def _sadd_batch(self, indexes: list[int], campaign_id: str | None) -> tuple[int, int]:
        """Add one chunk; returns (members new to the list, size of the largest bucket touched)."""
        shift = 63 - BUCKET_BITS
        by_bucket: dict[int, array[int]] = defaultdict(lambda: array("I"))
        for ix in indexes:
            by_bucket[ix >> shift].append((ix >> _MEMBER_SHIFT) & _MEMBER_MASK)
        suffix = "dnc" if campaign_id is None else f"dnc:{campaign_id}"
        script = self._scripts["dnc_add"]
        items = list(by_bucket.items())
        added, largest = 0, 0
        if not self.cluster:
            async with self._guard():
                await self._redis.script_load(_DNC_ADD)
        for i in range(0, len(items), 16_384):  # one round trip per 16,384 buckets
            async with self._guard():
                pipe = self._redis.pipeline(transaction=False)
                for bucket, members in items[i:i + 16_384]:
                    if sys.byteorder != "little" and not self.cluster:
                        members.byteswap()
                    key = f"{self.prefix}:{{n:{bucket}}}:{suffix}"
                    if self.script_calls is not None:
                        self.script_calls.append(("dnc_add", [key], None))
                    if self.cluster:  # redis-py refuses EVALSHA in a cluster pipeline: plain SADD
                        pipe.sadd(key, *members.tolist())
                    else:
                        pipe.evalsha(script.sha, 1, key, members.tobytes())
                    pipe.scard(key)
                replies = await pipe.execute()
            added += sum(replies[0::2])
            largest = max(largest, *replies[1::2])
        return added, largest

    async def dnc_contains(self, phones: Iterable[str], campaign_id: str | None = None) -> list[bool]:
        """For each number: on the global DNC list, or on ``campaign_id``'s. One round trip."""
        targets: list[str | None] = [None] if campaign_id is None else [None, campaign_id]
        return await self._members([self._index(p) for p in phones],
                                   lambda ix: [self._dnc_key(ix, target) for target in targets])

    async def invalid_numbers(self, phones: Iterable[str]) -> list[bool]:
        """For each number: found invalid by an earlier call (hangup cause). One round trip."""
        return await self._members([self._index(p) for p in phones], lambda ix: [self.number_tag(ix) + "inv"])

    async def _members(self, indexes: list[int], keys_of: Any) -> list[bool]:
        """For each blind index: a member of any of the bucket sets ``keys_of(ix)`` names; SMISMEMBER
        grouped per set, all in one pipeline."""
        await self._ensure_layout()
        by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)  # key -> (position, member)
        for pos, ix in enumerate(indexes):
            for key in keys_of(ix):
                by_key[key].append((pos, member_of(ix)))
        out = [False] * len(indexes)
        if not by_key:
            return out
        async with self._guard():
            pipe = self._redis.pipeline(transaction=False)
            for key, entries in by_key.items():
                pipe.smismember(key, [m for _, m in entries])
            replies = await pipe.execute()
        for (_, entries), hits in zip(by_key.items(), replies, strict=True):
            for (pos, _), hit in zip(entries, hits, strict=True):
                out[pos] = out[pos] or bool(hit)
        return out

    async def load_dnc_file(self, path: str | Path, campaign_id: str | None = None) -> int:
        """Bulk-load a DNC file (one E.164 number per line; blank lines and ``#`` comments skipped).

        Returns how many numbers were new to the list. Lines that are not E.164 are
        counted and logged (never their content) and skipped: a DNC entry that cannot
        match a lead protects nobody, so the operator must see it.
        """
        skipped = 0

        def indexes() -> Iterable[int]:
            nonlocal skipped
            with open(path, encoding="utf-8") as fh:
                for raw in fh:
                    line = raw.strip()
                    if not line or line.startswith("#"):
                        continue
                    if not _E164.match(line):
                        skipped += 1
                        continue
                    yield self._index(line)

        added = await self._add_indexes(indexes(), campaign_id)
        if skipped:
            log.warning("dnc file lines skipped: not E.164", skipped=skipped, file=str(path))
        log.info("dnc file loaded", added=added, campaign=campaign_id or "global")
        return added

    def dnc_key_pattern(self) -> str:
        """A SCAN pattern matching every DNC bucket (global and per campaign) of this deployment."""
        return f"{self.prefix}:{{n:*}}:dnc*"

    # -- reading ---------------------------------------------------------------------------

    async def lead_counts(self, campaign_id: str) -> dict[str, int]:
        async with self._guard():
            raw = await self._redis.hgetall(self.campaign_tag(campaign_id) + "counts")
        counts = {"pending": 0, "leased": 0, "in_call": 0, "done": 0}
        counts.update({k: int(v) for k, v in raw.items()})
        return counts

    async def lead_zones(self, campaign_id: str) -> set[str]:
        """The union of the campaign's per-tier zone sets (``rz:<tier>``): two commands, once a minute."""
        t = self.campaign_tag(campaign_id)
        async with self._guard():
            tiers = await self._redis.smembers(t + "tiers")
            if not tiers:
                return set()
            return set(await self._redis.sunion([t + f"rz:{tier}" for tier in tiers]))

    async def next_eligible_at(self, campaign_id: str) -> float | None:
        async with self._guard():
            first = await self._redis.zrange(self.campaign_tag(campaign_id) + "due", 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def calls_in_progress(self, campaign_id: str) -> dict[str, list[float]]:
        """Per node: when the number lock of each call it reserved and has not finished lapses (wall
        time), earliest first. A node that died leaves its calls here until then (the PBX may still carry
        them); what an operator reads to tell a dead node's held leads from a live node's calls."""
        t = self.campaign_tag(campaign_id)
        out: dict[str, list[float]] = defaultdict(list)
        cursor = 0
        while True:
            async with self._guard():  # the number -> lead map lists every lead, in the campaign's slot
                cursor, entries = await self._redis.hscan(t + "num", cursor, count=1000)
                rows: list[Any] = []
                if entries:
                    pipe = self._redis.pipeline(transaction=False)
                    for lead_id in entries.values():
                        pipe.hmget(t + f"lead:{lead_id}", ["st", "node", "lu"])
                    rows = await pipe.execute()
            for st, node, lu in rows:
                if st == "in_call":
                    out[node or "?"].append(float(lu or 0))
            if cursor == 0:
                return {node: sorted(v) for node, v in sorted(out.items())}

    async def _stream(self, key: str, field: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = "-"
        while True:
            async with self._guard():
                entries = await self._redis.xrange(key, min=start, count=5000)
            out.extend(json.loads(fields[field]) for _, fields in entries)
            if len(entries) < 5000:
                return out
            start = "(" + entries[-1][0]

    async def results(self, campaign_id: str) -> list[dict[str, Any]]:
        return await self._stream(self.campaign_tag(campaign_id) + "res", "r")

    async def blocks(self, campaign_id: str) -> list[dict[str, Any]]:
        return await self._stream(self.campaign_tag(campaign_id) + "blk", "b")

    async def reencrypt(self, campaign_id: str) -> int:
        """Rewrite the phone token of every lead not under the current data key (key rotation, step 2)."""
        t = self.campaign_tag(campaign_id)
        done, cursor = 0, 0
        while True:
            async with self._guard():  # the number -> lead map lists every lead, in the campaign's slot
                cursor, entries = await self._redis.hscan(t + "num", cursor, count=1000)
            for key in (t + f"lead:{lead_id}" for lead_id in entries.values()):
                async with self._guard():
                    blob, ix = await self._redis.hmget(key, ["d", "ix"])
                if blob is None:
                    continue
                d = json.loads(blob)
                sealed = d.get("sa") or {}
                if not (self._cipher.needs_rotation(d["p"]) or any(map(self._cipher.needs_rotation, sealed.values()))):
                    continue
                context = f"{campaign_id}/{ix}"
                d["p"] = self._cipher.encrypt(self._cipher.decrypt(d["p"], context), context)
                d["sa"] = {k: self._cipher.encrypt(self._cipher.decrypt(t, f"{context}/{k}"), f"{context}/{k}")
                           for k, t in sealed.items()}
                async with self._guard():
                    done += int(await self._run("reencrypt", [key], [blob, json.dumps(d, separators=(",", ":"))]))
            if cursor == 0:
                return done

    # -- key layout ------------------------------------------------------------------------

    @property
    def layout_key(self) -> str:
        """The key holding the layout version this deployment's data is written under."""
        return f"{self.prefix}:{{meta}}:layout"

    @property
    def migration_key(self) -> str:
        """Present while ``migrate_layout`` runs (or after it was interrupted): its phase."""
        return f"{self.prefix}:{{meta}}:migration"

    async def _ensure_layout(self) -> None:
        """Checked once per store object, before the first read or write that depends on the layout."""
        if not self._layout_ok:
            await self.check_layout()

    async def _number_keys(self, limit: int = 0) -> list[tuple[str, int, str]]:
        """The per-number keys of this deployment as (key, bucket tag, rest of the name); the first
        ``limit`` whose tag or name only layout 1 writes, when ``limit`` is given (a quick check)."""
        head = f"{self.prefix}:{{n:"
        out: list[tuple[str, int, str]] = []
        async with self._guard(deadline=max(self._op_timeout, 600.0)):
            async for key in self._redis.scan_iter(match=head + "*", count=1000):
                tag, sep, rest = key[len(head):].partition("}:")
                if not (sep and tag.isdigit()):
                    continue
                if limit and not (int(tag) >= 1 << BUCKET_BITS or self._old_number_key(int(tag), rest) is not None):
                    continue
                out.append((key, int(tag), rest))
                if limit and len(out) >= limit:
                    break
        return out

    @staticmethod
    def _old_number_key(tag: int, rest: str) -> int | None:
        """The blind index of a layout-1 per-number key (tagged by the index's top 16 bits, where layout 2
        tags by its top 12), else None. Only the rare index under 2^47 has the same key in both."""
        m = _NUMBER_KEY.match(rest)
        if m is None:
            return None
        ix = int(m.group(1))
        return ix if tag == ix >> (63 - OLD_BUCKET_BITS) and tag != bucket_of(ix) else None

    async def _layout_findings(self, limit: int = 0) -> list[str]:
        """Keys that can only have been written under layout 1: a bucket tag past layout 2's last
        (4,095), or a per-number key tagged by its index's top 16 bits. Stops after ``limit`` (0: all)."""
        if limit:
            return [key for key, _, _ in await self._number_keys(limit)]
        return [key for key, tag, rest in await self._number_keys()
                if tag >= 1 << BUCKET_BITS or self._old_number_key(tag, rest) is not None]

    async def check_layout(self) -> None:
        """Refuse a store whose data is not in this version's key layout (raises ``StoreLayoutError``,
        naming what was found and the command that fixes it); mark a store with no layout key and no
        older layout's data as current. Layout 1 kept the DNC list in 65,536 buckets: read as layout 2,
        its entries would not be found and numbers on the list would be dialled. Layout 2 kept one ready
        queue per tier: read as layout 3, its ready leads would never be claimed."""
        async with self._guard():
            version, phase = await self._redis.get(self.layout_key), await self._redis.get(self.migration_key)
        fix = ("stop every node, then run `dialer store migrate CAMPAIGN.toml` (`--dry-run` first to see "
               "what it will do); dialling is refused until then")
        where = f"redis store {self._where} (prefix {self.prefix!r})"
        if phase is not None:
            raise StoreLayoutError(f"{where}: a key layout migration is unfinished ({self.migration_key} = "
                                   f"{phase!r}); {fix}")
        if version == str(LAYOUT_VERSION):
            self._layout_ok = True
            return
        if version is not None:
            if not version.isdigit() or int(version) > LAYOUT_VERSION:
                raise StoreLayoutError(f"{where}: {self.layout_key} = {version!r}, a layout this version of "
                                       f"dialer-engine does not know (it reads layout {LAYOUT_VERSION}): "
                                       "upgrade dialer-engine on this node")
            raise StoreLayoutError(f"{where}: {self.layout_key} = {version!r}, an older key layout "
                                   f"(this version reads layout {LAYOUT_VERSION}); {fix}")
        old = await self._layout_findings(limit=3)
        if old:
            raise StoreLayoutError(f"{where}: no {self.layout_key} key, and keys of the old layout 1 (65,536 DNC "
                                   f"buckets) were found, e.g. {', '.join(old)}; {fix}")
        queues = [key for key, _, _ in await self._old_queues(limit=3)] or await self._campaign_tags(limit=3)
        if queues:  # leads written before the layout key existed: one ready queue per tier, no zones
            raise StoreLayoutError(f"{where}: no {self.layout_key} key, and campaign data of an older layout (one "
                                   f"ready queue per tier) were found, e.g. {', '.join(queues)}; {fix}")
        async with self._guard():
            await self._redis.set(self.layout_key, str(LAYOUT_VERSION), nx=True)
        self._layout_ok = False
        await self.check_layout()  # another node may have written something else meanwhile

    async def _old_queues(self, limit: int = 0) -> list[tuple[str, str, str]]:
        """Layout 2's ready queues (one per tier: ``rdy:<tier>``) as (key, campaign tag, tier); the
        first ``limit`` when given (a quick check)."""
        head = f"{self.prefix}:"
        out: list[tuple[str, str, str]] = []
        async with self._guard(deadline=max(self._op_timeout, 600.0)):
            async for key in self._redis.scan_iter(match=head + "{c:*}:rdy:*", count=1000):
                m = _OLD_QUEUE.match(key[len(head):])
                if m is None:
                    continue
                out.append((key, f"{head}{{c:{m.group(1)}}}:", m.group(2)))
                if limit and len(out) >= limit:
                    break
        return out

    async def _campaign_tags(self, limit: int = 0) -> list[str]:
        """Every campaign of the deployment, as its key tag prefix: campaigns with leads have a ``num``
        map; a queue with no map (hand-written, or left over) names its campaign too. Only the first
        ``limit`` campaigns with a map when given (a quick check)."""
        head = f"{self.prefix}:"
        tags: set[str] = set()
        async with self._guard(deadline=max(self._op_timeout, 600.0)):
            async for key in self._redis.scan_iter(match=head + "{c:*}:num", count=1000):
                tags.add(key[:-len("num")])
                if limit and len(tags) >= limit:
                    return sorted(tags)
        if not limit:
            tags.update(tag for _, tag, _ in await self._old_queues())
        return sorted(tags)

    async def migrate_layout(self, *, dry_run: bool = False) -> LayoutReport:
        """Convert older layouts' data to the current layout: layout 1's DNC and invalid-number sets and
        per-number keys to layout 2's buckets, then layout 2's ready queues (one per tier) to layout 3's
        (one per tier and zone).

        Crash-safe and re-runnable, in phases. The buckets (layout 1 only): (1) copy: the new sets are
        staged next to their final keys (``mig:<set>``, same slot) and per-number keys copied with their
        TTLs, old keys left untouched; (2) switch: each final set replaced by its staged copy, once per set
        (a done mark). The queues (layouts 1 and 2): (3) every lead record of every campaign given its zone
        and, if it was ready, queued in its (tier, zone) queue, a batch of leads per script, each lead once
        (a re-run finds it done); then the old per-tier queues are deleted and the layout key says 3.
        Last, (4) the layout-1 keys are cleaned up. ``<prefix>:{meta}:migration`` holds the phase: nodes
        refuse to dial while it exists, and a re-run resumes where a crash left off (the copy phase from the
        start, as old keys are unchanged then; the switch phase by its marks; the queue phase lead by lead).
        No node may write meanwhile (stop them all): an entry added to an old set after the copy is lost."""
        async with self._guard():
            version, phase = await self._redis.get(self.layout_key), await self._redis.get(self.migration_key)
        report = LayoutReport(layout_before=version or "none", state="migrated")
        if phase is None and version == str(LAYOUT_VERSION):
            report.state = "current"
            if not dry_run:
                report.removed = await self._layout_cleanup()
            return report
        if version is not None and (not version.isdigit() or int(version) > LAYOUT_VERSION):
            raise StoreLayoutError(f"{self.layout_key} = {version!r}: a layout newer than this dialer-engine "
                                   f"knows ({LAYOUT_VERSION}); use the dialer-engine that wrote it")
        layout1 = phase is None and version in (None, "1") and bool(await self._layout_findings(limit=1))
        if phase is None and version is None and not layout1 and not await self._campaign_tags():
            report.state = "would-stamp" if dry_run else "stamped"
            if not dry_run:
                async with self._guard():
                    await self._redis.set(self.layout_key, str(LAYOUT_VERSION), nx=True)
            return report
        report.buckets = layout1 or version == "1" or phase in ("copying", "switching")
        report.resumed = phase in ("switching", "queues")
        report.resumed_at = {"switching": "switch", "queues": "queue"}.get(phase or "", "")
        if dry_run:
            report.state = "dry-run"
            if report.buckets and not report.resumed:
                await self._layout_copy(report, write=False)
            if not report.resumed:  # a migration cut half-way: counting what is left would mislead
                await self._layout_queues(report, write=False)
            return report
        if report.buckets:
            if phase != "switching":
                async with self._guard():
                    await self._redis.set(self.migration_key, "copying")
                await self._layout_copy(report, write=True)
                async with self._guard():
                    await self._redis.set(self.migration_key, "switching")
            await self._layout_switch()
        async with self._guard():
            await self._redis.set(self.migration_key, "queues")
        await self._layout_queues(report, write=True)
        async with self._guard():
            await self._redis.set(self.layout_key, str(LAYOUT_VERSION))
            await self._redis.delete(self.migration_key)
        self._layout_ok = True
        report.removed = await self._layout_cleanup()
        log.info("key layout migrated", **{k: v for k, v in vars(report).items() if k != "examples"})
        return report

    async def _layout_queues(self, report: LayoutReport, *, write: bool) -> None:
        """Phase 3: every campaign's leads given their zone and its ready leads queued per (tier, zone),
        a thousand leads per script (``_LAYOUT_QUEUES``); then the per-tier queues, which hold nothing a
        claim could lease any more (ids with no lead record, if anything), deleted."""
        old = await self._old_queues()
        for t in await self._campaign_tags():
            report.campaigns += 1
            if not write:
                async with self._guard():
                    report.leads += int(await self._redis.hlen(t + "num"))
                    for key, tag, _ in old:
                        if tag == t:
                            report.queued += int(await self._redis.zcard(key))
                continue
            cursor = 0
            while True:
                async with self._guard():
                    cursor, entries = await self._redis.hscan(t + "num", cursor, count=_SWITCH_BATCH)
                    if entries:
                        report.queued += int(await self._run("layout_queues", [t + "tiers"],
                                                             [t, *entries.values()], t))
                report.leads += len(entries)
                if cursor == 0:
                    break
            async with self._guard():
                for key, tag, _ in old:
                    if tag == t:
                        await self._redis.unlink(key)

    async def _layout_copy(self, report: LayoutReport, *, write: bool) -> None:
        """Phase 1: every layout-1 set staged in layout 2 (SADD: repeating it is harmless), every
        layout-1 per-number key copied (DUMP/RESTORE with its remaining TTL)."""
        staged: dict[tuple[int, str], array[int]] = defaultdict(lambda: array("I"))
        number_keys: list[tuple[str, str]] = []
        sets: list[tuple[str, int, str]] = []
        for key, tag, rest in await self._number_keys():
            if _SET_SUFFIX.match(rest):
                sets.append((key, tag, rest))
            else:
                ix = self._old_number_key(tag, rest)
                if ix is not None:
                    number_keys.append((key, f"{self.prefix}:{{n:{bucket_of(ix)}}}:{rest}"))
        for key, tag, rest in sets:
            async with self._guard():
                members = await self._redis.smembers(key)
            report.old_sets += 1
            report.entries += len(members)
            if len(report.examples) < 3:
                report.examples.append(key)
            for member in members:
                bucket, new = migrate_member(tag, int(member))
                staged[(bucket, rest)].append(new)
        report.new_sets = len(staged)
        report.number_keys = len(number_keys)
        if not write:
            return
        items = list(staged.items())
        for i in range(0, len(items), _SWITCH_BATCH):
            async with self._guard():
                pipe = self._redis.pipeline(transaction=False)
                for (bucket, rest), members in items[i:i + _SWITCH_BATCH]:
                    for j in range(0, len(members), 10_000):
                        pipe.sadd(f"{self.prefix}:{{n:{bucket}}}:mig:{rest}", *members[j:j + 10_000].tolist())
                await pipe.execute()
        for i in range(0, len(number_keys), _SWITCH_BATCH):
            batch = number_keys[i:i + _SWITCH_BATCH]
            async with self._guard():
                pipe = self._redis.pipeline(transaction=False)
                for old, _ in batch:
                    pipe.dump(old)
                    pipe.pttl(old)
                got = await pipe.execute()
                pipe = self._redis.pipeline(transaction=False)
                for (_, new), data, ttl in zip(batch, got[0::2], got[1::2], strict=True):
                    if data is not None and ttl != -2:
                        pipe.restore(new, max(int(ttl), 0), data, replace=True)
                await pipe.execute()

    async def _layout_switch(self) -> None:
        """Phase 2: each final set of layout 2's buckets (0..4,095, whose names layout 1 also used)
        replaced by its staged copy, or deleted when nothing was staged for it; once each (a mark)."""
        finals: set[tuple[int, str]] = set()
        for _, tag, rest in await self._number_keys():
            if rest.startswith("mig:"):
                finals.add((tag, rest[4:]))
            elif tag < 1 << BUCKET_BITS and _SET_SUFFIX.match(rest):
                finals.add((tag, rest))
        runs = []
        for tag, rest in sorted(finals):
            n = f"{self.prefix}:{{n:{tag}}}:"
            runs.append(("layout_switch", ([n + rest, n + "mig:" + rest, n + "migdone:" + rest], [])))
        for i in range(0, len(runs), _SWITCH_BATCH):
            async with self._guard():
                await self._run_many(runs[i:i + _SWITCH_BATCH])

    async def _layout_cleanup(self) -> int:
        """Phase 3: layout-1 keys (sets past bucket 4,095, per-number keys under their old tag) and the
        switch's marks deleted. Only ever run under layout 2, so it deletes nothing layout 2 reads."""
        doomed = [key for key, tag, rest in await self._number_keys()
                  if rest.startswith(("migdone:", "mig:")) or tag >= 1 << BUCKET_BITS
                  or self._old_number_key(tag, rest) is not None]
        for i in range(0, len(doomed), _SWITCH_BATCH):
            async with self._guard():
                pipe = self._redis.pipeline(transaction=False)
                for key in doomed[i:i + _SWITCH_BATCH]:
                    pipe.unlink(key)
                await pipe.execute()
        return len(doomed)

    async def warm_up(self, connections: int = WARM_CONNECTIONS) -> None:
        """The layout checked, every script loaded, and ``connections`` connections open, each with
        its handshake done (measured: without it the decisions of a flood's first five seconds were
        its slowest, 6-15 ms a round trip against 1 ms after; see BENCHMARKS.md, Floods)."""
        await self._ensure_layout()
        async with self._guard():
            for script in self._scripts.values():
                await self._redis.script_load(script.script)
            if not self.cluster:  # a cluster client opens its per-node connections on first use
                await asyncio.gather(*(self._redis.ping() for _ in range(connections)))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        if not self.cluster:  # a pool we made ourselves is ours to close
            with contextlib.suppress(Exception):
                await self._redis.connection_pool.disconnect()


def _pow2(n: int) -> int:
    """The power of two at or above ``n`` (a round figure for the intset setting)."""
    return 1 << max(0, int(n) - 1).bit_length()


_RESERVED_OK = Reservation(True)


def _refusal(rule: str, caps: Caps, day_key: str) -> Reservation:
    reasons = {
        "dnc": "number is on a do-not-call list",
        "invalid_number": "number found invalid on an earlier call",
        "in_flight": "another attempt to this number is in progress",
        "cap_per_day": f"{caps.per_day} calls already on {day_key}",
        "cap_24h": f"{caps.per_24h} calls in the last 24 h",
        "cap_lifetime": f"{caps.lifetime} attempts already made",
        "lease_lost": "the lead was dialled by another node after this node's lease lapsed",
        "unknown_lead": "no such lead in the campaign",
    }
    return Reservation(False, rule, reasons.get(rule, rule))
