"""Distributions the engine learns online, per campaign, for the predictive pacer.

Pacing needs the whole distributions, not the means: how likely a call that
has rung for 12 s is to be answered in the next 5 s, how likely an agent 90 s
into a call is to be free within 10 s. Each estimate starts from a prior (so
the first minutes of a campaign are paced sensibly) and forgets old data
geometrically (so a drifting answer rate is followed).
"""

from __future__ import annotations

import math

import numpy as np

REFRESH = 16  # observations a distribution takes before the pacer's conditional tables are rebuilt
WRAP_BIN = 0.5  # seconds: elapsed wrap-up resolution of those tables
RING_BIN = 0.25  # seconds: elapsed ring-time resolution
WRAP_ROWS = 256  # elapsed wrap-up bins (of 3,600) the wrap-up table is first made for: 128 s, more on demand


_ONES = np.ones(4096)
_max = np.maximum.reduce  # ``a.max()`` without its Python wrapper
# What a derived table was built from: the horizons (the array, and its bytes), and for each
# distribution behind it the observation count at which the table is stale.
_TableKey = tuple[np.ndarray, bytes, tuple[int, ...]]


def _ones(n: int) -> np.ndarray:
    return _ONES[:n] if n <= len(_ONES) else np.ones(n)


class Histogram:
    """An empirical distribution on a fixed grid, with a prior and exponential forgetting.

    Forgetting is done by growing the weight of new observations instead of
    decaying every bin on each one, so ``add`` is O(1).
    """

    __slots__ = ("_cdf", "_counts", "_gain", "_weight", "edges", "n", "step")

    def __init__(self, step: float, top: float, prior: np.ndarray, prior_weight: float,
                 memory: float) -> None:
        self.step = step
        self.edges = np.arange(0.0, top + step, step)
        bins = len(self.edges) - 1
        prior = np.asarray(prior, dtype=float)[:bins]
        self._counts = prior / prior.sum() * prior_weight
        self._gain = 1.0 / (1.0 - 1.0 / memory)
        self._weight = 1.0
        self._cdf: np.ndarray | None = None
        self.n = 0

    def add(self, value: float) -> None:
        i = min(int(max(value, 0.0) / self.step), len(self._counts) - 1)
        self._weight *= self._gain
        self._counts[i] += self._weight
        if self._weight > 1e12:
            self._counts /= self._weight
            self._weight = 1.0
        self._cdf = None
        self.n += 1

    def cdf_grid(self) -> np.ndarray:
        if self._cdf is None:
            c = np.concatenate(([0.0], self._counts.cumsum()))
            self._cdf = c / c[-1]
        return self._cdf

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        return np.interp(x, self.edges, self.cdf_grid())

    def survival(self, x: np.ndarray | float) -> np.ndarray:
        return 1.0 - self.cdf(x)

    def mean(self) -> float:
        mids = (self.edges[:-1] + self.edges[1:]) / 2
        return float((self._counts * mids).sum() / self._counts.sum())


def exponential_prior(edges: np.ndarray, mean: float) -> np.ndarray:
    c = 1.0 - np.exp(-edges / mean)
    return np.diff(c) + 1e-12


def gamma_prior(edges: np.ndarray, mean: float, shape: float = 4.0) -> np.ndarray:
    """Gamma(shape, mean/shape) bin masses, from its CDF in closed form for integer shapes."""
    k = max(1, round(shape))
    x = edges / (mean / k)
    cdf = 1.0 - np.exp(-x) * sum(x**i / math.factorial(i) for i in range(k))
    return np.diff(cdf) + 1e-12


def fixed_prior(edges: np.ndarray, value: float) -> np.ndarray:
    p = np.full(len(edges) - 1, 1e-9)
    p[min(int(value / (edges[1] - edges[0])), len(p) - 1)] = 1.0
    return p


class AnswerRate:
    """Probability that a dial ends in an answer needing an agent (live, or unknown without AMD).

    A Beta estimate with geometric forgetting: ``memory`` dials of effective history.
    """

    __slots__ = ("_a", "_b", "_decay", "n")

    def __init__(self, prior: float, prior_weight: float = 30.0, memory: float = 600.0) -> None:
        self._a = prior * prior_weight
        self._b = (1.0 - prior) * prior_weight
        self._decay = 1.0 - 1.0 / memory
        self.n = 0

    def add(self, answered: bool) -> None:
        self._a = self._a * self._decay + (1.0 if answered else 0.0)
        self._b = self._b * self._decay + (0.0 if answered else 1.0)
        self.n += 1

    @property
    def p(self) -> float:
        return self._a / (self._a + self._b)

    @property
    def variance(self) -> float:
        """Uncertainty of ``p`` itself (Beta variance): large early on and with few dials remembered."""
        n = self._a + self._b
        return self._a * self._b / (n * n * (n + 1.0))


class Estimates:
    """Everything learnt about one campaign's calls and agents."""

    def __init__(self, *, answer_rate: float = 0.25, ring_mean: float = 8.0, talk_mean: float = 120.0,
                 wrap_mean: float = 15.0, ring_timeout: float = 25.0) -> None:
        ring_edges = np.arange(0.0, ring_timeout + 0.5 + 0.5, 0.5)
        talk_edges = np.arange(0.0, 7200.0 + 2.0, 2.0)
        wrap_edges = np.arange(0.0, 1800.0 + 1.0, 1.0)
        # 2000 dials of memory: ten minutes of a 100-agent team (a drift is followed within the hour),
        # and an answer rate known to +-1 % absolute, whose shared uncertainty the pacer must allow for.
        self.answer = AnswerRate(answer_rate, memory=2000.0)
        self.ring = Histogram(0.5, ring_timeout + 0.5, gamma_prior(ring_edges, ring_mean), 20.0, 2000.0)
        self.talk = Histogram(2.0, 7200.0, exponential_prior(talk_edges, talk_mean), 20.0, 2000.0)
        self.wrap = Histogram(1.0, 1800.0, gamma_prior(wrap_edges, wrap_mean, 8.0), 20.0, 2000.0)
        self.version = 0  # bumped on every observation, so consumers can cache derived arrays
        self._pending: dict[str, bool | None] = {}  # dials in dial order -> outcome once known
        self._wrap_mean: float | None = None
        self._free_key: _TableKey | None = None
        self._ring_key: _TableKey | None = None
        self._free: tuple[np.ndarray, np.ndarray] = (np.zeros((1, 1)), np.zeros((1, 1)))
        # The same tables with their squares alongside ([q | q * q]): one row lookup and one sum give
        # both the mean and the variance of the agents free.
        self._free_sq: tuple[np.ndarray, np.ndarray] = (np.zeros((1, 2)), np.zeros((1, 2)))
        # The wrap-up table's rows are made as far as elapsed wrap-ups reach (``_wrap_rows`` of them, the
        # first ``WRAP_ROWS`` at once): wrap-ups last seconds, the table covers half an hour.
        self._wrap_rows = 0
        self._wrap_horizons: np.ndarray = np.zeros(0)
        self._ring: tuple[np.ndarray, np.ndarray] = (np.zeros(1), np.zeros((1, 1)))
        # P(answered needing an agent within each horizon) by elapsed ring bin, and its square, for one
        # answer rate and one ring table (``_answer_table``): most decisions see the rate of the last one.
        self._answer_key: tuple[float, np.ndarray] | None = None
        self._answer: tuple[np.ndarray, np.ndarray] = (np.zeros((1, 1)), np.zeros((1, 1)))

    def dialled(self, call_id: str) -> None:
        """Register a dial so that its outcome is learnt in dial order (see ``observe_answer``)."""
        self._pending[call_id] = None

    def observe_answer(self, needs_agent: bool, ring_s: float | None = None, call_id: str | None = None) -> None:
        """Learn one dial's outcome.

        Answers are known within seconds, no-answers only at the ring timeout, so
        learning outcomes in the order they become known over-weights answers
        whenever the dial rate changes (and the pacer then over-dials, which
        makes the next wave worse). Outcomes of registered dials are therefore
        learnt in *dial* order: each waits until every earlier dial is resolved.
        """
        if needs_agent and ring_s is not None:
            self.ring.add(ring_s)
        if call_id is None or call_id not in self._pending:
            self.answer.add(needs_agent)
        else:
            self._pending[call_id] = needs_agent
            self._drain()
        self.version += 1

    def forget(self, call_id: str) -> None:
        """A dial whose outcome will never be known (lost, interrupted): stop waiting for it."""
        if call_id in self._pending and self._pending[call_id] is None:
            del self._pending[call_id]
            self._drain()

    def _drain(self) -> None:
        while self._pending:
            first = next(iter(self._pending))
            outcome = self._pending[first]
            if outcome is None:
                return
            del self._pending[first]
            self.answer.add(outcome)

    def observe_talk(self, seconds: float) -> None:
        self.talk.add(seconds)
        self.version += 1

    def observe_wrap(self, seconds: float) -> None:
        self.wrap.add(seconds)
        self._wrap_mean = None
        self.version += 1

    def wrap_mean(self) -> float:
        if self._wrap_mean is None:
            self._wrap_mean = self.wrap.mean()
        return self._wrap_mean

    @staticmethod
    def _stale(horizons: np.ndarray, cached: _TableKey | None, *hists: Histogram) -> bool:
        """A derived table is rebuilt when its horizons change or a distribution behind it has taken
        ``REFRESH`` new observations (learning is slow: staleness of a few dozen calls changes nothing,
        and it keeps a pacing decision down to a few vector operations). Asked at every decision, so
        it is cheap: the very horizons array of the last build (the pacer keeps its grid) needs no
        comparison, and each distribution's count that makes the table stale is worked out once."""
        if cached is None or (horizons is not cached[0] and horizons.tobytes() != cached[1]):
            return True
        for h, due in zip(hists, cached[2], strict=True):
            if h.n >= due:
                return True
        return False

    @staticmethod
    def _table_key(horizons: np.ndarray, *hists: Histogram) -> _TableKey:
        return horizons, horizons.tobytes(), tuple(h.n + max(REFRESH, min(h.n // 8, 250)) for h in hists)

    def _free_tables(self, horizons: np.ndarray, wrap_rows: int = 1 << 30) -> tuple[np.ndarray, np.ndarray]:
        """P(free within each horizon) by elapsed talk bin and by elapsed wrap-up bin (the wrap-up table
        made at least ``wrap_rows`` rows deep, all of them by default; see ``_wrap_rows``)."""
        if self._stale(horizons, self._free_key, self.talk, self.wrap):
            self._free_key = self._table_key(horizons, self.talk, self.wrap)
            self._wrap_mean = None
            wrap_mean = self.wrap_mean()
            # Elapsed talk beyond the 99.99th percentile is looked up in the last row.
            top = int(np.searchsorted(self.talk.cdf_grid(), 0.9999)) + 1
            te = self.talk.edges[:top, None] + self.talk.step / 2
            s_now = np.maximum(self.talk.survival(te), 1e-9)
            # An agent on a call is free once the rest of the talk and a typical wrap-up are over.
            left = np.maximum(horizons[None, :] - wrap_mean, 0.0)
            talk_q = np.clip(np.where(left > 0, 1.0 - self.talk.survival(te + left) / s_now, 0.0), 0.0, 1.0)
            self._free = (talk_q, talk_q[:0])
            self._free_sq = (np.hstack((talk_q, talk_q * talk_q)), self._free_sq[1])
            self._wrap_horizons = horizons
            self._make_wrap_rows(max(self._wrap_rows, WRAP_ROWS, wrap_rows))
        else:
            self._free_key = self._rekeyed(self._free_key, horizons)
            if wrap_rows > self._wrap_rows:
                self._make_wrap_rows(max(wrap_rows, 2 * self._wrap_rows))
        return self._free

    @staticmethod
    def _rekeyed(key: _TableKey | None, horizons: np.ndarray) -> _TableKey | None:
        """A fresh table's key, made to name ``horizons`` (an array equal to the one it was built for) as
        its horizons: the pacer makes a new array of the same horizons each time it rebuilds its grid,
        and without this every later decision took the slow way through ``_stale`` (a bytes comparison)
        until the table itself was rebuilt, rather than the identity check of ``free_sq_tables`` and
        ``ring_tables``. The table and when it goes stale are unchanged."""
        if key is None or key[0] is horizons:
            return key
        return horizons, key[1], key[2]

    def _make_wrap_rows(self, rows: int) -> None:
        """The wrap-up table (and the one with its squares alongside) made ``rows`` rows deep, or whole.
        Each row is worked out on its own, so the rows made are the very numbers of the whole table."""
        full = len(np.arange(0.0, self.wrap.edges[-1], WRAP_BIN))
        rows = min(rows, full)
        q = np.clip(self._wrap_table(self._wrap_horizons, rows), 0.0, 1.0)
        self._free = (self._free[0], q)
        self._free_sq = (self._free_sq[0], np.hstack((q, q * q)))
        self._wrap_rows = rows

    def _wrap_table(self, horizons: np.ndarray, rows: int | None = None) -> np.ndarray:
        """P(free within each horizon) by elapsed wrap-up bin: 1 - S(elapsed + h) / S(elapsed) (the first
        ``rows`` bins, or all)."""
        we = (np.arange(0.0, self.wrap.edges[-1], WRAP_BIN) + WRAP_BIN / 2)[:rows]
        steps = horizons / WRAP_BIN
        shift = steps.astype(np.intp)
        if not (np.array_equal(shift, steps) and shift.min(initial=0) >= 0):
            w_now = np.maximum(self.wrap.survival(we[:, None]), 1e-9)
            return 1.0 - self.wrap.survival(we[:, None] + horizons[None, :]) / w_now
        # Every horizon a whole number of bins (the usual case): elapsed + h is itself a bin's midpoint,
        # so one survival curve, looked up shifted, gives the very same numbers at a quarter of the cost.
        top = WRAP_BIN * (len(we) + int(shift.max(initial=0)) + 1)
        curve = self.wrap.survival(np.arange(0.0, top, WRAP_BIN) + WRAP_BIN / 2)
        w_now = np.maximum(curve[:len(we)], 1e-9)[:, None]
        return 1.0 - curve[np.arange(len(we))[:, None] + shift[None, :]] / w_now

    def _ring_tables(self, horizons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ring-time CDF by elapsed ring bin, and its gain over each horizon."""
        if self._stale(horizons, self._ring_key, self.ring):
            self._ring_key = self._table_key(horizons, self.ring)
            re_ = np.arange(0.0, self.ring.edges[-1] + RING_BIN, RING_BIN) + RING_BIN / 2
            f_now = self.ring.cdf(re_)
            self._ring = (f_now, self.ring.cdf(re_[:, None] + horizons[None, :]) - f_now[:, None])
        else:
            self._ring_key = self._rekeyed(self._ring_key, horizons)
        return self._ring

    def free_within(self, talk_elapsed: np.ndarray, wrap_elapsed: np.ndarray,
                    horizons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(each agent is ready again within each horizon): arrays shaped (agents, horizons)."""
        ti = (talk_elapsed * (1.0 / self.talk.step)).astype(np.intp)  # past the last row: the last row
        wi = (wrap_elapsed * (1.0 / WRAP_BIN)).astype(np.intp)
        talk_q, wrap_q = self._free_tables(horizons, int(_max(wi)) + 1 if len(wi) else 0)
        return talk_q.take(ti, axis=0, mode="clip"), wrap_q.take(wi, axis=0, mode="clip")

    def free_sums(self, talk_elapsed: np.ndarray, wrap_elapsed: np.ndarray,
                  horizons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Over all agents, by horizon: the sum of P(ready again within it) and the sum of its squares
        (the mean of the number free, and with it the variance). Rows are looked up in the tables with
        their squares alongside, and summed as a product with a vector of ones (a third the cost of
        ``sum(axis=0)`` on these short, wide arrays): two numpy calls per kind of agent."""
        wi = (wrap_elapsed * (1.0 / WRAP_BIN)).astype(np.intp) if len(wrap_elapsed) else None
        self._free_tables(horizons, 0 if wi is None else int(_max(wi)) + 1)
        talk, wrap = self._free_sq
        total = None
        if len(talk_elapsed):
            rows = talk.take((talk_elapsed * (1.0 / self.talk.step)).astype(np.intp), axis=0, mode="clip")
            total = _ones(len(rows)) @ rows
        if wi is not None:
            rows = wrap.take(wi, axis=0, mode="clip")
            more = _ones(len(rows)) @ rows
            total = more if total is None else total + more
        size = len(horizons)
        if total is None:
            return np.zeros(size), np.zeros(size)
        return total[:size], total[size:]

    def free_sq_tables(self, horizons: np.ndarray, wrap_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The tables ``free_sums`` looks agents up in (by elapsed talk bin of ``talk.step`` seconds and by
        elapsed wrap-up bin of ``WRAP_BIN``: P(free within each horizon), its square alongside), refreshed
        as ``free_sums`` refreshes them, the wrap-up one at least ``wrap_rows`` rows deep: for the compiled
        decision (``engine.pacing.kernel``), which sums the rows itself."""
        key = self._free_key  # ``_stale``'s usual answer first, inline: asked at every decision
        if (key is not None and horizons is key[0] and self.talk.n < key[2][0] and self.wrap.n < key[2][1]
                and wrap_rows <= self._wrap_rows):
            return self._free_sq
        self._free_tables(horizons, wrap_rows)
        return self._free_sq

    def ring_tables(self, horizons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What ``answered_sums`` works from, by elapsed ring bin of ``RING_BIN`` seconds: the ring-time CDF
        at the bin, and its gain over each horizon (refreshed as ``answered_sums`` refreshes it): for the
        compiled decision, which scales them by the answer rate itself, as ``_answer_table`` does."""
        key = self._ring_key
        if key is not None and horizons is key[0] and self.ring.n < key[2][0]:
            return self._ring
        return self._ring_tables(horizons)

    def answered_sums(self, ring_elapsed: np.ndarray, horizons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Over the ringing calls, by horizon: the sum of P(answered needing an agent within it) and the
        sum of its squares (each call's row and its square looked up by elapsed ring bin)."""
        a, a2 = self._answer_table(horizons)
        ri = (ring_elapsed * (1.0 / RING_BIN)).astype(np.intp)  # past the last bin: the last bin ("clip")
        ones = _ones(len(ri))
        return ones @ a.take(ri, axis=0, mode="clip"), ones @ a2.take(ri, axis=0, mode="clip")

    def answered_within(self, ring_elapsed: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        """P(each ringing call is answered needing an agent within each horizon), (calls, horizons)."""
        ri = (ring_elapsed * (1.0 / RING_BIN)).astype(np.intp)  # past the last bin: the last bin ("clip")
        return self._answer_table(horizons)[0].take(ri, axis=0, mode="clip")

    def _answer_table(self, horizons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """By elapsed ring bin: P(answered needing an agent within each horizon), and its square. A call
        that has rung for a while without an answer is less likely to be answered at all than a new one:
        ``p`` scaled by the answer probability left at its elapsed time. Made for every bin at once, for
        the current answer rate, and kept while that rate and the ring table stay (element by element
        the very numbers a per-call computation gives: the same operations on the same bin's values)."""
        f_now, f_gain = self._ring_tables(horizons)
        p = self.answer.p
        key = self._answer_key
        if key is None or key[0] != p or key[1] is not f_now:
            scale = p / np.maximum(1.0 - p * f_now, 1e-9)
            a = np.minimum(f_gain * scale[:, None], 1.0)
            self._answer = (a, a * a)
            self._answer_key = (p, f_now)
        return self._answer
