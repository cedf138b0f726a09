"""The predictive pacer's normal-path decision, compiled (numba).

A 100-agent campaign decides some 6,000 times a simulated hour. In numpy each decision is some
thirty calls on arrays of a few hundred numbers plus a scan of the candidates in plain floats, and
the fixed cost of each call is most of it (about 85 µs a decision inside a simulated shift, a quarter
of the simulator's time). Compiled, the same arithmetic is one call of a few microseconds.

The reference is the numpy path (``PredictivePacer.parts`` and ``_Parts.first_over``): the kernel does
the same operations in the same order on the same tables, so its decisions are those of the reference
(``tests/test_pacing_kernel.py`` compares them on random snapshots and on a whole simulated shift).
The only freedom taken is the order of the sums over calls and agents (numpy's matrix product may add
in blocks), which can move the last bit of a sum, never a decision in the shifts compared.

Compiled once per machine (``cache=True``: the machine code is kept beside this file or in numba's
cache directory) and loaded on first use; ``warm_up`` does that before a campaign starts, so that the
first decision of a live campaign does not wait for the compiler.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from engine.pacing.predictive import _SF_ARRAY, _SLOPE_ARRAY, _Z0, _Z_ARRAY, _Z_STEPS, _Z_TOP

# The normal-tail table of ``predictive._sf_scalar``: module constants, which numba compiles in.
_ZS, _SFS, _SLOPES = _Z_ARRAY, _SF_ARRAY, _SLOPE_ARRAY


@njit(cache=True, nogil=True)
def _sf(z: float) -> float:  # pragma: no cover - compiled
    """``predictive._sf_scalar``: ``np.interp`` in the normal-tail table, one number."""
    if z <= _Z0:
        return _SFS[0] if z == z else z
    if z >= _Z_TOP:
        return _SFS[len(_SFS) - 1]
    j = int((z - _Z0) * _Z_STEPS)
    if j > 0 and z < _ZS[j]:
        j -= 1
    elif z >= _ZS[j + 1]:
        j += 1
    return _SLOPES[j] * (z - _ZS[j]) + _SFS[j]


@njit(cache=True, nogil=True)
def _bin(elapsed: float, scale: float, last: int) -> int:  # pragma: no cover - compiled
    """The table row of an elapsed time (``elapsed * scale``), clipped to the table as ``take(mode="clip")``
    clips."""
    return min(max(int(elapsed * scale), 0), last)


@njit(cache=True, nogil=True)
def _answer_scale(rate: float, ring_now: float) -> float:  # pragma: no cover - compiled
    """What a ringing call's ring-time gain is scaled by to give P(answered needing an agent): a call that
    has rung a while unanswered is less likely to be answered at all (``Estimates._answer_table``)."""
    return rate / max(1.0 - rate * ring_now, 1e-9)


@njit(cache=True, nogil=True)
def _row_sums(elapsed: np.ndarray, scale: float, table: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """Add to ``out`` the table's row of each elapsed time (its bin: ``elapsed * scale``, clipped to the
    table, as ``take(mode="clip")`` does)."""
    last = table.shape[0] - 1
    for c in range(len(elapsed)):
        i = _bin(elapsed[c], scale, last)
        for h in range(len(out)):
            out[h] += table[i, h]


@njit(cache=True, nogil=True)
def _marginal_over(risk: np.ndarray, weight: np.ndarray, allowance: float) -> bool:  # pragma: no cover
    """Whether a candidate's marginal risk, from its risk by answer horizon, is over ``allowance``: the
    running max from the last horizon (an early answer takes an agent a later one would have had),
    weighted by when the call is answered (``predictive._weighted``). ``risk`` is overwritten."""
    size = len(risk)
    running = risk[size - 1]
    for k in range(1, size):
        h = size - 1 - k
        if risk[h] > running:
            running = risk[h]
        risk[h] = running
    total = 0.0
    for h in range(size):
        total += risk[h] * weight[h]
    return total > allowance


@njit(cache=True, nogil=True)
def normal_first_over(base: float, noise: float, rate: float, p: float, var_p: float,
                      ringing: np.ndarray, ring_scale: float, ring_now: np.ndarray, ring_gain: np.ndarray,
                      on_call: np.ndarray, talk_scale: float, talk_sq: np.ndarray,
                      wrap_up: np.ndarray, wrap_scale: float, wrap_sq: np.ndarray,
                      ring_cdf: np.ndarray, weight: np.ndarray, cap: int,
                      allowance: float) -> int:  # pragma: no cover - compiled
    """The first new dial (0-based) whose marginal abandon risk is over ``allowance``, or ``cap``.

    ``base`` is calls waiting minus agents ready; ``rate`` the answer rate learnt and ``p`` the same kept
    off zero. ``ring_now``/``ring_gain`` give, by elapsed ring bin, the ring-time CDF and its gain over
    each horizon, from which P(answered needing an agent within each horizon) is worked out for each
    ringing call as ``Estimates._answer_table`` does for every bin; ``talk_sq``/``wrap_sq`` give, by
    elapsed talk or wrap-up bin, P(free within each horizon) with its square alongside (``[q | q*q]``).
    See ``engine.pacing.predictive`` for the model.
    """
    size = len(weight)
    mu = np.full(size, base)
    var = np.full(size, noise)
    per_p0 = np.zeros(size)
    if len(ringing):
        s = np.zeros(size)
        sq = np.zeros(size)
        last = len(ring_now) - 1
        for c in range(len(ringing)):
            i = _bin(ringing[c], ring_scale, last)
            scale = _answer_scale(rate, ring_now[i])
            for h in range(size):
                a = min(ring_gain[i, h] * scale, 1.0)
                s[h] += a
                sq[h] += a * a
        for h in range(size):
            mu[h] = base + s[h]
            var[h] = noise + (s[h] - sq[h])
            per_p0[h] = s[h] / p
    if len(on_call) or len(wrap_up):
        free = np.zeros(2 * size)
        if len(on_call):
            _row_sums(on_call, talk_scale, talk_sq, free)
        if len(wrap_up):  # summed apart, then added: the reference's order of additions
            more = np.zeros(2 * size)
            _row_sums(wrap_up, wrap_scale, wrap_sq, more)
            for h in range(2 * size):
                free[h] += more[h]
        for h in range(size):
            mu[h] = mu[h] - free[h]
            var[h] = var[h] + (free[h] - free[size + h])
    risk = np.zeros(size)
    for n in range(cap):
        x = float(n)
        # Last horizon first: the marginal risk is at least the risk there, so over the allowance there,
        # the scan ends at once.
        for k in range(size):
            h = size - 1 - k
            a = p * ring_cdf[h]
            per_p = per_p0[h] + x * (a / p)
            z = (-0.5 - (mu[h] + x * a)) / math.sqrt(var[h] + x * (a * (1.0 - a)) + per_p * per_p * var_p)
            risk[h] = _sf(z)
            if k == 0 and risk[h] > allowance:
                return n
        if _marginal_over(risk, weight, allowance):
            return n
    return cap


@njit(cache=True, nogil=True)
def _not_free_rows(elapsed: np.ndarray, scale: float, table: np.ndarray, q_all: np.ndarray,
                   j: int) -> int:  # pragma: no cover - compiled
    """Rows ``j``, ``j + 1``... of ``q_all``: P(each agent is *not* free by each horizon), from the table of
    P(free) by elapsed bin; returns the next row."""
    last = table.shape[0] - 1
    for c in range(len(elapsed)):
        i = _bin(elapsed[c], scale, last)
        for h in range(q_all.shape[1]):
            q_all[j, h] = 1.0 - table[i, h]
        j += 1
    return j


@njit(cache=True, nogil=True)
def exact_first_over(need: int, rate: float, p: float,
                     ringing: np.ndarray, ring_scale: float, ring_now: np.ndarray, ring_gain: np.ndarray,
                     on_call: np.ndarray, talk_scale: float, talk_sq: np.ndarray,
                     wrap_up: np.ndarray, wrap_scale: float, wrap_sq: np.ndarray,
                     ring_cdf: np.ndarray, weight: np.ndarray, cap: int,
                     allowance: float) -> int:  # pragma: no cover - compiled
    """``PredictivePacer.reference_exact_first_over``: the same decision from the exact distributions.

    ``need`` is agents ready minus calls waiting plus agents busy. The terms (each ringing call answered
    by each horizon, each busy agent *not* free by it) are taken in the reference's order: ringing
    calls, agents on a call, agents in wrap-up. The tables are those of ``normal_first_over``.
    """
    size = len(weight)
    count = len(ringing) + len(on_call) + len(wrap_up)
    q_all = np.empty((count, size))
    j = 0
    last = len(ring_now) - 1
    for c in range(len(ringing)):
        i = _bin(ringing[c], ring_scale, last)
        scale = _answer_scale(rate, ring_now[i])
        for h in range(size):
            q_all[j, h] = min(ring_gain[i, h] * scale, 1.0)
        j += 1
    j = _not_free_rows(on_call, talk_scale, talk_sq, q_all, j)
    j = _not_free_rows(wrap_up, wrap_scale, wrap_sq, q_all, j)
    # pmf[h, i] = P(i of the terms happen by horizon h), built term by term
    pmf = np.zeros((size, count + 1))
    for h in range(size):
        pmf[h, 0] = 1.0
        for j in range(count):
            q = q_all[j, h]
            stay = 1.0 - q
            for i in range(j + 1, 0, -1):  # from the top: each cell reads the one below before it changes
                pmf[h, i] = pmf[h, i] + pmf[h, i - 1] * q
                pmf[h, i - 1] = pmf[h, i - 1] * stay
    # tails[h, k] = P(X_h >= need - cap + k), k = 0..cap; each new dial ahead of the candidate adds a
    # Bernoulli(answered by h): tail(k) <- (1 - a) tail(k) + a tail(k - 1)
    tails = np.empty((size, cap + 1))
    for h in range(size):
        # P(at least i), summed from the top as the reference's reversed cumulative sum
        at_least = np.zeros(count + 2)
        total = 0.0
        for i in range(count, -1, -1):
            total = total + pmf[h, i] if i < count else pmf[h, i]
            at_least[i] = total
        for k in range(cap + 1):
            idx = need - cap + k
            tails[h, k] = 1.0 if idx < 0 else at_least[min(idx, count + 1)]
    risk = np.empty(size)
    for n in range(cap):
        if n:
            for h in range(size):
                a = p * ring_cdf[h]
                for k in range(cap, 0, -1):
                    tails[h, k] = (1.0 - a) * tails[h, k] + a * tails[h, k - 1]
        if tails[size - 1, cap] > allowance:
            return n
        for h in range(size):
            risk[h] = tails[h, cap]
        if _marginal_over(risk, weight, allowance):
            return n
    return cap


_warm = False


def warm_up() -> None:
    """Compile (or load from the cache) before the first decision: once per process."""
    global _warm
    if _warm:
        return
    one, table = np.zeros(1), np.zeros((1, 2))
    normal_first_over(0.0, 0.05, 0.3, 0.3, 0.0, one, 4.0, one, table, one, 0.5, table, one, 2.0, table,
                      one, one, 1, 0.5)
    exact_first_over(1, 0.3, 0.3, one, 4.0, one, table, one, 0.5, table, one, 2.0, table, one, one, 1, 0.5)
    _warm = True
