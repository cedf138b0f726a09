"""Predictive pacing: dial ahead of free agents, as far as the abandon allowance permits.

The question asked at every decision is about the *next* dial: if it is
answered, how likely is it that no agent is free within the connect limit?
Over a grid of answer times ``h``, answers needing an agent by ``h`` (calls
waiting now, ringing calls, the other new dials) are compared with agents free
by ``h + connect limit`` (ready now, or finishing talk and wrap-up in time).
Both are sums of independent Bernoullis from the learnt distributions; their
difference is taken as normal with a continuity correction. Weighting the
per-``h`` risk by when a new call is answered gives the marginal abandon
probability of the n-th dial, which rises with n; the pacer dials while it
stays within the controller's allowance. Working from the distributions rather
than from means is what lets small teams run close to the cap safely.
"""

from __future__ import annotations

import numpy as np

from engine.pacing.base import Decision, Snapshot, dial_cap


def normal_sf(z: np.ndarray) -> np.ndarray:
    """P(Z > z) for a standard normal (Abramowitz-Stegun 7.1.26, |error| < 1.5e-7)."""
    x = np.abs(z) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erfc = poly * np.exp(-x * x)
    return np.where(z >= 0, 0.5 * erfc, 1.0 - 0.5 * erfc)


HORIZONS = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0, 12.5, 15.0, 18.0, 22.0, 26.0, 32.0, 40.0, 50.0,
                     60.0, 90.0, 120.0])


class PredictivePacer:
    name = "predictive"

    def __init__(self) -> None:
        self._cache_key: tuple[int, int, float] | None = None
        self._cached: tuple[np.ndarray, np.ndarray, np.ndarray] = (HORIZONS, HORIZONS, HORIZONS)

    def _grid(self, snap: Snapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Answer-time grid, the weight of each cell and a new dial's answer probability by each
        horizon; recomputed only when the learnt distributions changed."""
        est = snap.estimates
        key = (id(est), est.version, snap.ring_timeout)
        if key != self._cache_key:
            horizons = HORIZONS[HORIZONS < snap.ring_timeout]
            horizons = np.append(horizons, snap.ring_timeout)
            ring_cdf = est.ring.cdf(horizons)
            weight = np.diff(np.concatenate(([0.0], ring_cdf)))
            weight = weight / max(weight.sum(), 1e-12)
            self._cached = (horizons, weight, est.answer.p * ring_cdf)
            self._cache_key = key
        return self._cached

    def marginal_risk(self, snap: Snapshot, max_new: int) -> np.ndarray:
        """Marginal abandon probability (given a live answer) of the 1st..``max_new``-th new dial."""
        est = snap.estimates
        horizons, weight, a_new = self._grid(snap)

        mu_d = np.full(len(horizons), float(snap.waiting))
        var_d = np.zeros(len(horizons))
        if snap.ringing:
            a = est.answered_within(np.asarray(snap.ringing), horizons)
            mu_d += a.sum(0)
            var_d += (a * (1.0 - a)).sum(0)
        p = max(est.answer.p, 1e-6)
        # Every call shares the same unknown answer rate: its uncertainty does not average out, and
        # dominates the binomial noise for large teams and early in a campaign.
        ringing_per_p = (mu_d - snap.waiting) / p

        mu_s = np.full(len(horizons), float(snap.ready))
        var_s = np.zeros(len(horizons))
        if snap.on_call or snap.wrap_up:
            tq, wq = est.free_within(np.asarray(snap.on_call, dtype=float),
                                     np.asarray(snap.wrap_up, dtype=float),
                                     horizons + snap.connect_limit)
            for q in (tq, wq):
                if q.size:
                    mu_s += q.sum(0)
                    var_s += (q * (1.0 - q)).sum(0)

        others = np.arange(max_new, dtype=float)[:, None]  # new dials ahead of the candidate
        mu = mu_d + others * a_new - mu_s
        per_p = ringing_per_p + others * (a_new / p)
        var = var_d + var_s + others * a_new * (1.0 - a_new) + per_p * per_p * est.answer.variance + 0.05
        risk_h = normal_sf((-0.5 - mu) / np.sqrt(var))  # P(demand - supply >= 0) by each horizon
        # A call answered early takes an agent that a later answer would have had: it adds an abandon
        # whenever demand overtakes supply at its answer time *or later*, hence the running max from the end.
        risk_h = np.maximum.accumulate(risk_h[:, ::-1], axis=1)[:, ::-1]
        return risk_h @ weight

    def decide(self, snap: Snapshot) -> Decision:
        cap = dial_cap(snap)
        if cap == 0 or snap.staffed == 0:
            return Decision()
        risk = self.marginal_risk(snap, cap)
        over = np.flatnonzero(risk > snap.allowance)
        return Decision(dials=int(over[0]) if over.size else cap)
