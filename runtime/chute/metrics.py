"""``/metrics``: the Prometheus text format, read from the runtime's own statistics.

No second set of books: a collector walks the same structs ``/v1/status``
and the dashboard show (topic and group stats from the broker, each pool's
counters, autoscaler statistics and histograms, operator and shard state,
source stats) at scrape time. Counting happens where it always did.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .broker import TopicStats
from .meters import Histogram

if TYPE_CHECKING:
    from .engine import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_POOL_GAUGES = {
    "concurrency": ("concurrency", "Worker slots in force now."),
    "target": ("target", "Concurrency the autoscaler asked for on its last tick."),
    "arrival_rate": ("arrival_rate", "λ: items arriving per second, as the autoscaler sees it."),
    "service_time_seconds": ("service_time", "S: mean executor seconds per item."),
    "backlog": ("backlog", "Items arrived and not finished (lag + pending)."),
    "utilization": ("utilization", "Fraction of the concurrency limit that was busy."),
    "min": ("min", "Lowest concurrency the scale allows."),
    "max": ("max", "Highest concurrency the scale allows."),
}


class _Snapshot(msgspec.Struct):
    """What needs an ``await`` (the broker's topic stats), taken before collecting."""

    topics: list[TopicStats]


class RuntimeCollector(Collector):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.snapshot = _Snapshot(topics=[])

    def collect(self) -> Iterator[Metric]:
        yield from self._runtime()
        yield from self._topics()
        yield from self._pools()
        yield from self._operators()
        yield from self._sources()

    def _runtime(self) -> Iterator[Metric]:
        rt = self.rt
        ready = GaugeMetricFamily("chute_ready", "1 when /readyz answers 200.")
        ready.add_metric([], 0.0 if rt.unready_reasons() else 1.0)
        yield ready
        broker = GaugeMetricFamily("chute_broker_healthy", "1 while the broker is reachable.")
        broker.add_metric([], 1.0 if getattr(rt.broker, "healthy", True) else 0.0)
        yield broker

    def _topics(self) -> Iterator[Metric]:
        t = ["topic"]
        g = ["topic", "group"]
        length = GaugeMetricFamily("chute_topic_length", "Entries the topic holds.", labels=t)
        capacity = GaugeMetricFamily("chute_topic_capacity", "Entries before publishers wait.",
                                     labels=t)  # fmt: skip
        published = CounterMetricFamily("chute_topic_published", "Messages published.", labels=t)
        lag = GaugeMetricFamily("chute_group_lag", "Published, not yet delivered.", labels=g)
        pending = GaugeMetricFamily("chute_group_pending", "Delivered, not yet acked.", labels=g)
        oldest = GaugeMetricFamily("chute_group_oldest_pending_age_seconds",
                                   "Age of the oldest pending delivery.", labels=g)  # fmt: skip
        acked = CounterMetricFamily("chute_group_acked", "Deliveries acknowledged.", labels=g)
        for stats in self.snapshot.topics:
            length.add_metric([stats.topic], stats.length)
            capacity.add_metric([stats.topic], stats.capacity)
            published.add_metric([stats.topic], stats.published)
            for group in stats.groups:
                labels = [stats.topic, group.name]
                lag.add_metric(labels, group.lag)
                pending.add_metric(labels, group.pending)
                oldest.add_metric(labels, group.oldest_pending_age)
                acked.add_metric(labels, group.acked)
        yield from (length, capacity, published, lag, pending, oldest, acked)

    def _pools(self) -> Iterator[Metric]:
        p = ["pool"]
        gauges = {
            name: GaugeMetricFamily(f"chute_pool_{name}", doc, labels=p)
            for name, (_, doc) in _POOL_GAUGES.items()
        }
        in_flight = GaugeMetricFamily("chute_pool_in_flight", "Items running now.", labels=p)
        items = CounterMetricFamily(
            "chute_pool_items",
            "Items by outcome: done; failed (attempts); retried; dead; skipped (already done).",
            labels=["pool", "outcome"],
        )
        durations = HistogramMetricFamily("chute_pool_duration_seconds",
                                          "Executor seconds per attempt.", labels=p)  # fmt: skip
        waits = HistogramMetricFamily("chute_pool_queue_wait_seconds",
                                      "Seconds from publishing to an attempt's start.",
                                      labels=p)  # fmt: skip
        for name, pool in self.rt.pools.items():
            c = pool.counters
            in_flight.add_metric([name], c.in_flight)
            scale = c.scale
            for metric, (field, _) in _POOL_GAUGES.items():
                value = getattr(scale, field) if scale is not None else _before_first_tick(c, field)
                gauges[metric].add_metric([name], float(value))
            outcomes = {
                "done": c.succeeded, "failed": c.failed, "retried": max(0, c.failed - c.dead),
                "dead": c.dead, "skipped": c.skipped,
            }  # fmt: skip
            for outcome, n in outcomes.items():
                items.add_metric([name, outcome], n)
            _add_histogram(durations, [name], pool.durations)
            _add_histogram(waits, [name], pool.queue_waits)
        yield from (*gauges.values(), in_flight, items, durations, waits)

    def _operators(self) -> Iterator[Metric]:
        messages = CounterMetricFamily("chute_operator_messages", "Messages by what became of them.",
                                       labels=["operator", "kind"])  # fmt: skip
        healthy = GaugeMetricFamily("chute_shard_healthy", "1 while the shard takes its keys.",
                                    labels=["operator", "shard"])  # fmt: skip
        for name, op in self.rt.operators.items():
            stats = getattr(op, "stats", None)
            if stats is not None:
                for kind, n in msgspec.to_builtins(stats()).items():
                    if isinstance(n, int) and not isinstance(n, bool):
                        messages.add_metric([name, kind], n)
            shards = getattr(op, "healthy", None)
            outputs = getattr(op, "outputs", None)
            if isinstance(shards, list) and isinstance(outputs, list):
                for topic, ok in zip(outputs, shards, strict=False):
                    healthy.add_metric([name, str(topic)], 1.0 if ok else 0.0)
        yield from (messages, healthy)

    def _sources(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, (source, _) in self.rt.sources.items():
            stats = getattr(source, "stats", None)
            if not isinstance(stats, msgspec.Struct):
                continue
            for field, value in msgspec.to_builtins(stats).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    family = families.get(field)
                    if family is None:
                        family = families[field] = GaugeMetricFamily(
                            f"chute_source_{field}", f"The source's {field} statistic.",
                            labels=["source"],
                        )  # fmt: skip
                    family.add_metric([name], float(value))
        yield from families.values()


def _before_first_tick(counters: Any, field: str) -> float:
    """Before the autoscaler's first tick, the configured size stands in for its figures."""
    if field in ("concurrency", "target", "min", "max"):
        return float(counters.concurrency)
    return 0.0


def _add_histogram(family: HistogramMetricFamily, labels: list[str], h: Histogram) -> None:
    family.add_metric(labels, h.cumulative(), sum_value=h.sum)


class Metrics:
    """A registry of its own (never the process-global one) over one runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.collector = RuntimeCollector(rt)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    async def render(self) -> bytes:
        self.collector.snapshot = _Snapshot(
            topics=[await self.rt.broker.stats(t) for t in sorted(self.rt.topics)]
        )
        return generate_latest(self.registry)
