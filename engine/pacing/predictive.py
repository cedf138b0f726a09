"""Predictive pacing: dial ahead of free agents, as far as the abandon allowance permits.

The question asked at every decision is about the *next* dial: if it is
answered, how likely is it that no agent is free within the connect limit?
Over a grid of answer times ``h``, answers needing an agent by ``h`` (calls
waiting now, ringing calls, the other new dials) are compared with agents free
by ``h + connect limit`` (ready now, or finishing talk and wrap-up in time).
Both are sums of independent Bernoullis from the learnt distributions.
Weighting the per-``h`` risk by when a new call is answered gives the marginal
abandon probability of the n-th dial, which rises with n; the pacer dials while
it stays within the controller's allowance.

Two ways to the distribution of answers minus agents free, the whole of it
(working from distributions rather than from means is what lets small teams run
close to the cap safely):

- exact, for up to ``EXACT_TERMS`` ringing calls and staffed agents: the sum of
  Bernoullis built term by term, for every horizon at once. With a handful of
  terms it is lumpy and skewed, and a normal tail misjudges it exactly where a
  small team's decisions are made: on the reference model at a 3 % cap this
  path lifts a 5-agent team from 0.784 to 0.828 occupancy (BENCHMARKS.md);
- normal, past that: mean and variance (plus the shared uncertainty of the
  answer rate) and a continuity correction. As good for large teams, and far
  cheaper there.

Cost, normal path (what a 100-agent team takes): about thirty small numpy
operations for the sums over calls and agents, then candidates one by one in
plain floats (a numpy call's fixed cost is more than a dozen horizons' worth of
arithmetic), the first four, then in blocks of vector operations (8, then 4
times more each time) for the rare decision that starts many dials: about
0.05 ms a decision measured alone, 15-45 % less than the all-numpy scan it
replaced, with the same decisions. The exact path takes 0.1 ms at 5-10 agents.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from typing import Any

import numpy as np

from engine.pacing.base import Decision, Snapshot, dial_cap
from engine.pacing.estimates import RING_BIN, WRAP_BIN


def normal_sf(z: np.ndarray) -> np.ndarray:
    """P(Z > z) for a standard normal (Abramowitz-Stegun 7.1.26, |error| < 1.5e-7)."""
    x = np.abs(z) * 0.7071067811865476
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    half = 0.5 * poly * np.exp(-x * x)
    return np.where(z >= 0, half, 1.0 - half)


_Z = np.linspace(-9.0, 9.0, 9001)
_SF = normal_sf(_Z)


def fast_sf(z: np.ndarray) -> np.ndarray:
    """``normal_sf`` by interpolation in a table (|error| < 2e-7): one vector operation instead of fifteen."""
    return np.interp(z, _Z, _SF)


# The same table as plain floats, for the scalar path of the candidate scan: ``_sf_scalar`` does what
# ``np.interp`` does (same bracketing, same slope, same rounding), one number at a time. Kept as packed
# doubles (``array``), not lists of float objects: a lookup reads one place in memory, not a pointer and
# then an object somewhere else, which counts inside a shift, where these 9,001-entry tables are never
# all in cache (about a tenth of a decision's time, measured).
_Z_LIST = array("d", _Z.tolist())
_SF_LIST = array("d", _SF.tolist())
_SLOPE_LIST = array("d", [(_SF_LIST[i + 1] - _SF_LIST[i]) / (_Z_LIST[i + 1] - _Z_LIST[i])
                          for i in range(len(_Z_LIST) - 1)])
_Z0, _Z_TOP, _Z_STEPS = _Z_LIST[0], _Z_LIST[-1], (len(_Z_LIST) - 1) / (_Z_LIST[-1] - _Z_LIST[0])
# And as arrays, for the compiled decision (``engine.pacing.kernel``, which compiles them in).
_Z_ARRAY, _SF_ARRAY, _SLOPE_ARRAY = np.asarray(_Z_LIST), np.asarray(_SF_LIST), np.asarray(_SLOPE_LIST)
_NONE = np.zeros(0)
_NO_TABLE = np.zeros((1, 1))


def _sf_scalar(z: float) -> float:
    """``fast_sf`` of one number without numpy's per-call cost (a decision asks for a few dozen)."""
    if z <= _Z0:
        return _SF_LIST[0] if z == z else z
    if z >= _Z_TOP:
        return _SF_LIST[-1]
    j = int((z - _Z0) * _Z_STEPS)
    # The grid is linspace'd: the computed cell may be one off at its edges; np.interp's is exact.
    if j > 0 and z < _Z_LIST[j]:
        j -= 1
    elif z >= _Z_LIST[j + 1]:
        j += 1
    return _SLOPE_LIST[j] * (z - _Z_LIST[j]) + _SF_LIST[j]


HORIZONS = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0, 12.5, 15.0, 18.0, 22.0, 26.0, 32.0, 40.0, 50.0,
                     60.0, 90.0, 120.0])
NOISE_VAR = 0.05  # a floor on the variance: the model's own error, and no division by zero
# Ringing calls plus staffed agents up to which the risk comes from the exact distributions (a sum of
# about that many Bernoullis, built term by term) rather than from their normal approximation. Small teams: the
# normal tail is far off (5 agents: occupancy 0.784 -> 0.828 at the same abandon rate, 10 agents:
# 0.865 -> 0.872); past some 20 agents it is as good (20 agents: 0.912 either way) and far cheaper.
EXACT_TERMS = 32
SCALAR_CANDIDATES = 4  # candidate dials scanned one by one in plain floats before vector blocks take over
FIRST_BLOCK = 8  # then candidates in blocks of vector operations, each block 4 times larger


def _weighted(risk_h: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Marginal abandon risk of each candidate (row) from its risk by answer horizon. A call answered
    early takes an agent that a later answer would have had: it adds an abandon whenever demand
    overtakes supply at its answer time *or later*, hence the running max from the end."""
    return np.maximum.accumulate(risk_h[:, ::-1], axis=1)[:, ::-1] @ weight


class _Parts:
    """Demand and supply by each horizon before any new dial, and what one new dial adds (``mu0``,
    ``var0`` and ``per_p0`` are plain numbers, the same at every horizon, when no call or agent adds to
    them)."""

    __slots__ = ("a_new", "mu0", "p", "per_p0", "var0", "var_p", "weight")

    def __init__(self, mu0: np.ndarray | float, var0: np.ndarray | float, a_new: np.ndarray, weight: np.ndarray,
                 p: float, per_p0: np.ndarray | float, var_p: float) -> None:
        self.mu0, self.var0, self.a_new, self.weight = mu0, var0, a_new, weight
        self.p, self.per_p0, self.var_p = p, per_p0, var_p

    def risk_by_horizon(self, n: np.ndarray) -> np.ndarray:
        """P(answers needing an agent >= agents free) by each horizon, with ``n`` other new dials ahead."""
        a = self.a_new
        n = n[:, None]
        mu = self.mu0 + n * a
        per_p = self.per_p0 + n * (a / self.p)
        var = self.var0 + n * (a * (1.0 - a)) + per_p * per_p * self.var_p
        return fast_sf((-0.5 - mu) / np.sqrt(var))

    def first_over(self, cap: int, allowance: float) -> int:
        """The first new dial (0-based) whose marginal risk is over ``allowance``, or ``cap``: the decision.

        The same figures as ``risk_by_horizon`` and the weighting, one candidate at a time in plain
        floats: a decision looks at two or three candidates on average, and over a dozen horizons a
        numpy call costs more in its fixed overhead than the arithmetic it does. Each candidate is
        first tried at the last horizon alone: the marginal risk is at least the risk there (the
        running max includes it), so a candidate over the allowance there ends the scan at once.
        """
        scalar_top = min(cap, SCALAR_CANDIDATES)
        a = self.a_new.tolist()
        size = len(a)
        p, var_p = self.p, self.var_p
        mu0 = self.mu0.tolist() if isinstance(self.mu0, np.ndarray) else [self.mu0] * size
        var0 = self.var0.tolist() if isinstance(self.var0, np.ndarray) else [self.var0] * size
        per_p0 = self.per_p0.tolist() if isinstance(self.per_p0, np.ndarray) else [self.per_p0] * size
        weight = self.weight.tolist()
        # One tuple of constants per horizon, last horizon first (the order of the running max).
        cols = list(zip(mu0, a, per_p0, [v / p for v in a], var0, [v * (1.0 - v) for v in a], strict=True))[::-1]
        first = cols[0]
        rest = cols[1:]
        sqrt, sf = math.sqrt, _sf_scalar
        z_lo, z_hi, steps, zs, sfs, slopes = _Z0, _Z_TOP, _Z_STEPS, _Z_LIST, _SF_LIST, _SLOPE_LIST
        risk = [0.0] * size
        for n in range(scalar_top):
            x = float(n)
            m0, a_h, pp0, ap_h, v0, aa_h = first
            per_p = pp0 + x * ap_h
            running = sf((-0.5 - (m0 + x * a_h)) / sqrt(v0 + x * aa_h + per_p * per_p * var_p))
            if running > allowance:
                return n
            i = size - 1
            risk[i] = running
            for m0, a_h, pp0, ap_h, v0, aa_h in rest:
                per_p = pp0 + x * ap_h
                z = (-0.5 - (m0 + x * a_h)) / sqrt(v0 + x * aa_h + per_p * per_p * var_p)
                if z_lo < z < z_hi:  # _sf_scalar, inlined
                    j = int((z - z_lo) * steps)
                    if j > 0 and z < zs[j]:
                        j -= 1
                    elif z >= zs[j + 1]:
                        j += 1
                    r = slopes[j] * (z - zs[j]) + sfs[j]
                else:
                    r = sf(z)
                if r > running:
                    running = r
                i -= 1
                risk[i] = running
            total = 0.0
            for r, w in zip(risk, weight, strict=True):
                total += r * w
            if total > allowance:
                return n
        return self._first_over_blocks(scalar_top, cap, allowance)

    def _first_over_blocks(self, start: int, cap: int, allowance: float) -> int:
        """``first_over`` from candidate ``start`` on, candidates taken in blocks of vector operations
        (8, then 4 times more each time): for the rare decision that starts many dials. Each row is
        computed alone, so a block gives the very figures of the scalar scan."""
        size = FIRST_BLOCK
        while start < cap:
            stop = min(cap, start + size)
            risk_h = self.risk_by_horizon(np.arange(start, stop, dtype=float))
            over_last = np.flatnonzero(risk_h[:, -1] > allowance)
            top = int(over_last[0]) if over_last.size else stop - start
            over = np.flatnonzero(_weighted(risk_h[:top], self.weight) > allowance) if top else over_last[:0]
            if over.size:
                return start + int(over[0])
            if over_last.size:
                return start + top
            start, size = stop, size * 4
        return cap


class PredictivePacer:
    name = "predictive"
    exact_max = EXACT_TERMS  # ringing calls + staffed agents up to which the exact path decides
    # Decide by the compiled kernels (``engine.pacing.kernel``); False: by the numpy reference path,
    # which gives the same decisions some 4-20 times slower (kept for the tests that compare the two).
    compiled = True

    def __init__(self) -> None:
        from engine.pacing import kernel  # numba's import and the compiled code: only for this pacer

        kernel.warm_up()
        self._kernel = kernel
        self._cache_key: tuple[int, int, float, float] | None = None
        self._cached: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] = (HORIZONS,) * 4

    def _grid(self, snap: Snapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Answer-time grid, the weight of each cell, the ring-time CDF at each horizon and the grid
        plus the connect limit; recomputed only when the learnt ring-time distribution changed."""
        est = snap.estimates
        key = (id(est), est.ring.n // 32, snap.ring_timeout, snap.connect_limit)
        if key != self._cache_key:
            horizons = HORIZONS[HORIZONS < snap.ring_timeout]
            horizons = np.append(horizons, snap.ring_timeout)
            ring_cdf = est.ring.cdf(horizons)
            weight = np.diff(np.concatenate(([0.0], ring_cdf)))
            weight = weight / max(weight.sum(), 1e-12)
            self._cached = (horizons, weight, ring_cdf, horizons + snap.connect_limit)
            self._cache_key = key
        return self._cached

    def parts(self, snap: Snapshot) -> _Parts:
        """Mean and variance of answers minus agents free by each horizon (the normal path)."""
        est = snap.estimates
        horizons, weight, ring_cdf, agent_horizons = self._grid(snap)
        p = max(est.answer.p, 1e-6)
        # Scalars until a sum over calls or agents makes them vectors (numpy broadcasts either way).
        mu: Any = float(snap.waiting - snap.ready)
        var: Any = NOISE_VAR
        per_p0: Any = 0.0
        if snap.ringing:
            s, sq = est.answered_sums(np.asarray(snap.ringing, dtype=float), horizons)
            mu = mu + s
            var = var + (s - sq)
            # Every call shares the same unknown answer rate: its uncertainty does not average out, and
            # dominates the binomial noise for large teams and early in a campaign.
            per_p0 = s / p
        if snap.on_call or snap.wrap_up:
            s, sq = est.free_sums(np.asarray(snap.on_call, dtype=float), np.asarray(snap.wrap_up, dtype=float),
                                  agent_horizons)
            mu = mu - s
            var = var + (s - sq)
        return _Parts(mu, var, p * ring_cdf, weight, p, per_p0, est.answer.variance)

    @staticmethod
    def _marginal(parts: _Parts, n: np.ndarray) -> np.ndarray:
        return PredictivePacer._weighted(parts.risk_by_horizon(n), parts.weight)

    @staticmethod
    def _weighted(risk_h: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return _weighted(risk_h, weight)

    def marginal_risk(self, snap: Snapshot, max_new: int) -> np.ndarray:
        """Marginal abandon probability (given a live answer) of the 1st..``max_new``-th new dial, by
        the path ``decide`` takes for this snapshot."""
        if self._exact(snap):
            return self.exact_marginal_risk(snap, max_new)
        return self._marginal(self.parts(snap), np.arange(max_new, dtype=float))

    def _exact(self, snap: Snapshot) -> bool:
        # Small teams only: a large team's answers are many and near normal, and early in a campaign the
        # normal path also carries the shared uncertainty of the answer rate, which the exact one does
        # not (a 100-agent team's first decision, all agents ready, is over a hundred dials).
        return len(snap.ringing) + snap.staffed <= self.exact_max

    def decide(self, snap: Snapshot) -> Decision:
        cap = dial_cap(snap)
        if cap == 0 or snap.staffed == 0:
            return Decision()
        if not self.compiled:
            if self._exact(snap):
                return Decision(dials=self.reference_exact_first_over(snap, cap))
            return Decision(dials=self.parts(snap).first_over(cap, snap.allowance))
        if self._exact(snap):
            return Decision(dials=self.exact_first_over(snap, cap))
        return Decision(dials=self.normal_first_over(snap, cap))

    def _kernel_inputs(self, snap: Snapshot) -> tuple[Any, ...]:
        """What both compiled decisions work from: the snapshot's elapsed times as arrays, and the learnt
        tables, refreshed exactly when the reference path (``parts``, ``_exact_risks``) refreshes them."""
        est = snap.estimates
        horizons, weight, ring_cdf, agent_horizons = self._grid(snap)
        ringing = np.fromiter(snap.ringing, float, len(snap.ringing)) if snap.ringing else _NONE
        ring_now, ring_gain = est.ring_tables(horizons) if snap.ringing else (_NONE, _NO_TABLE)
        talk_sq = wrap_sq = _NO_TABLE
        on_call = np.fromiter(snap.on_call, float, len(snap.on_call)) if snap.on_call else _NONE
        wrap_up = np.fromiter(snap.wrap_up, float, len(snap.wrap_up)) if snap.wrap_up else _NONE
        if snap.on_call or snap.wrap_up:
            wrap_rows = int(max(snap.wrap_up) * (1.0 / WRAP_BIN)) + 1 if snap.wrap_up else 0
            talk_sq, wrap_sq = est.free_sq_tables(agent_horizons, wrap_rows)
        return (ringing, 1.0 / RING_BIN, ring_now, ring_gain, on_call, 1.0 / est.talk.step, talk_sq,
                wrap_up, 1.0 / WRAP_BIN, wrap_sq, ring_cdf, weight)

    def normal_first_over(self, snap: Snapshot, cap: int) -> int:
        """``parts(snap).first_over(cap, snap.allowance)`` in one compiled call (``engine.pacing.kernel``)."""
        answer = snap.estimates.answer
        return self._kernel.normal_first_over(
            float(snap.waiting - snap.ready), NOISE_VAR, answer.p, max(answer.p, 1e-6), answer.variance,
            *self._kernel_inputs(snap), cap, snap.allowance)

    def exact_first_over(self, snap: Snapshot, cap: int) -> int:
        """The first new dial (0-based) whose marginal risk, from the exact distributions, is over the
        allowance, or ``cap``: the decision for a small team, in one compiled call
        (``reference_exact_first_over`` in numpy)."""
        answer = snap.estimates.answer
        need = snap.ready - snap.waiting + len(snap.on_call) + len(snap.wrap_up)
        return self._kernel.exact_first_over(need, answer.p, max(answer.p, 1e-6), *self._kernel_inputs(snap), cap,
                                       snap.allowance)

    def reference_exact_first_over(self, snap: Snapshot, cap: int) -> int:
        """``exact_first_over`` in numpy, term by term (see ``_exact_risks``): the reference."""
        allowance = snap.allowance
        weight = self._grid(snap)[1]
        for n, risk_h in enumerate(self._exact_risks(snap, cap)):
            # The marginal risk is at least the risk at the last horizon: over there, over at once.
            if risk_h[-1] > allowance or float(np.maximum.accumulate(risk_h[::-1])[::-1] @ weight) > allowance:
                return n
        return cap

    def exact_marginal_risk(self, snap: Snapshot, max_new: int) -> np.ndarray:
        """``marginal_risk`` from the exact distributions."""
        weight = self._grid(snap)[1]
        rows = list(self._exact_risks(snap, max_new))
        return _weighted(np.array(rows).reshape(len(rows), len(weight)), weight)

    def _exact_risks(self, snap: Snapshot, count_new: int) -> Iterator[np.ndarray]:
        """Risk by answer horizon of the 1st, 2nd, ... new dial (up to ``count_new``), from the exact
        distributions instead of their normal approximation.

        The candidate's answer at ``h`` is abandoned when the other answers by ``h`` (calls waiting,
        ringing calls answered, other new dials answered) reach the agents free by ``h`` plus the
        connect limit (ready, or finishing in time). With ``k`` agents busy, answers minus agents
        freed plus ``k`` is a sum of independent Bernoullis (each ringing call answered, each busy
        agent *not* free), whose distribution is built term by term, for all horizons at once. For a
        few calls and agents that lumpy distribution is far from normal, and the normal tail misjudges
        the risk exactly where a small team's decisions are made.
        """
        est = snap.estimates
        cap = count_new
        horizons, _, ring_cdf, agent_horizons = self._grid(snap)
        p = max(est.answer.p, 1e-6)
        size = len(horizons)
        terms = []
        if snap.ringing:
            terms.append(est.answered_within(np.asarray(snap.ringing, dtype=float), horizons))
        busy = len(snap.on_call) + len(snap.wrap_up)
        if busy:
            tq, wq = est.free_within(np.asarray(snap.on_call, dtype=float), np.asarray(snap.wrap_up, dtype=float),
                                     agent_horizons)
            terms += [1.0 - tq, 1.0 - wq]
        q_all = np.vstack(terms) if terms else np.zeros((0, size))
        count = len(q_all)
        # pmf[h, i] = P(i of the terms happen by horizon h)
        pmf = np.zeros((size, count + 1))
        pmf[:, 0] = 1.0
        for j in range(count):
            q = q_all[j][:, None]
            moved = pmf[:, :j + 1] * q
            pmf[:, :j + 1] *= 1.0 - q
            pmf[:, 1:j + 2] += moved
        # P(at least i) for each i, then the tail from the threshold on; each new dial ahead of the
        # candidate adds a Bernoulli(answered by h): tail(i) <- (1 - a) tail(i) + a tail(i - 1).
        need = snap.ready - snap.waiting + busy
        a = (p * ring_cdf)[:, None]
        # tails[h, i] = P(X_h >= need - cap + i), i = 0..cap: the n-th update leaves the last n + 1 right
        idx = np.arange(need - cap, need + 1)
        at_least = np.concatenate((np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1], np.zeros((size, 1))), axis=1)
        tails = at_least[:, np.clip(idx, 0, count + 1)]
        tails[:, idx < 0] = 1.0
        for n in range(cap):
            if n:
                tails[:, 1:] = (1.0 - a) * tails[:, 1:] + a * tails[:, :-1]
            yield tails[:, -1].copy()  # the next update writes over this column
