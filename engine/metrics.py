"""Prometheus metrics of a running campaign.

A custom collector reads the dialer's own counters when Prometheus scrapes,
so the hot path (every dial, every PBX event) pays nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.models import AgentState

_COUNTERS = [
    ("dials", "Originates sent"),
    ("live", "Live answers (abandon-rate denominator)"),
    ("connected", "Calls connected to an agent"),
    ("abandoned", "Live answers not connected within the connect limit"),
    ("machines", "Answering machines"),
    ("blocked", "Dials refused by the compliance gate or the reservation"),
    ("errors", "Calls whose handling raised"),
    ("held", "Pacing decisions held back because the event loop was behind"),
]


class DialerCollector:
    def __init__(self, dialer: Any) -> None:
        self.dialer = dialer

    def collect(self) -> Iterator[Metric]:
        d = self.dialer
        campaign = d.cfg.id
        for name, doc in _COUNTERS:
            c = CounterMetricFamily(f"dialer_{name}", doc, labels=["campaign"])
            c.add_metric([campaign], getattr(d.counters, name))
            yield c
        agents = GaugeMetricFamily("dialer_agents", "Agents by state", labels=["campaign", "state"])
        for state in AgentState:
            agents.add_metric([campaign, state.value], d.pool.count(state))
        yield agents
        gauges = [
            ("dialer_calls_in_flight", "Calls between reservation and end", len(d.calls)),
            ("dialer_abandon_allowance", "Marginal abandon probability the pacer may accept",
             d.controller.allowance),
            ("dialer_answer_rate", "Learnt probability that a dial needs an agent", d.estimates.answer.p),
            ("dialer_loop_lag_seconds", "How late the event loop runs its timers", d.loop_lag),
            ("dialer_store_down", "1 while the store is unreachable (dialling paused)", float(d.store_down)),
        ]
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc, labels=["campaign"])
            g.add_metric([campaign], value)
            yield g


def serve(dialer: Any, port: int, addr: str = "127.0.0.1") -> CollectorRegistry:
    """Expose ``/metrics`` on ``addr:port`` from a daemon thread."""
    registry = CollectorRegistry()
    registry.register(DialerCollector(dialer))
    start_http_server(port, addr=addr, registry=registry)
    return registry
