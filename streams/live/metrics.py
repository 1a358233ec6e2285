"""Prometheus metrics of the live worker (served on ``BYPASS_METRICS_PORT``, path ``/metrics``).

name                                        type       labels            what
bypass_events_in_total                      counter    topic             raw messages read
bypass_dlq_total                            counter    reason            messages sent to the DLQ
bypass_events_applied_total                 counter    entity            events applied to state
bypass_events_duplicate_total               counter    entity            redelivered events (no-op)
bypass_events_late_total                    counter    entity            events rejected as too late
bypass_processing_latency_seconds           histogram                    Kafka message timestamp of the
                                                                         raw event -> its hit sent
bypass_hits_total                           counter    rule_id, mode     hit records emitted
bypass_rule_errors_total                    counter    rule_id           rules that failed at run time
bypass_feature_values_skipped_total         counter    feature           values a feature skipped: the
                                                                         field held what its aggregation
                                                                         cannot use ("50000" for a sum)
bypass_blacklist_total                      counter    entity            blacklist records emitted
bypass_batch_size                           histogram  agent             events per agent batch
bypass_state_evicted_total                  counter    entity            keys dropped from the state
                                                                         tables as evictable
bypass_order_held_events                    gauge                        events held back for
                                                                         event-time order
bypass_order_paused_partitions              gauge                        source partitions paused
                                                                         (held events at the cap)
bypass_order_pauses_total                   counter                      times the cap paused sources
bypass_order_out_of_order_total             counter    entity            events that arrived below
                                                                         what was already released
bypass_dependency_retries_total             counter    entity            batches retried because a
                                                                         dependency (Redis lists) did
                                                                         not answer
bypass_dependency_waiting                   gauge                        1 while a batch waits for one
bypass_ruleset_info                         gauge      version           1 for the active version
bypass_ruleset_swaps_total                  counter                      rule sets activated
bypass_ruleset_rejected_total               counter                      broken sets seen on the topic
bypass_ruleset_publish_to_active_seconds    gauge                        last publish -> active delay
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, float("inf"))


class Metrics:
    """The worker's metrics in their own registry (several apps may live in one test process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter("bypass_events_in", "raw messages read", ["topic"], registry=r)
        self.dlq = Counter("bypass_dlq", "messages sent to the DLQ", ["reason"], registry=r)
        self.applied = Counter("bypass_events_applied", "events applied to state", ["entity"], registry=r)
        self.duplicates = Counter(
            "bypass_events_duplicate", "redelivered events (state unchanged)", ["entity"], registry=r
        )
        self.late = Counter("bypass_events_late", "events rejected as too late", ["entity"], registry=r)
        self.latency = Histogram(
            "bypass_processing_latency_seconds",
            "Kafka message timestamp of the raw event to its hit being sent",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.hits = Counter("bypass_hits", "hit records emitted", ["rule_id", "mode"], registry=r)
        self.rule_errors = Counter(
            "bypass_rule_errors", "rules that failed at run time", ["rule_id"], registry=r
        )
        self.feature_skipped = Counter(
            "bypass_feature_values_skipped",
            "values a feature skipped because its aggregation cannot use them (a string for a sum)",
            ["feature"],
            registry=r,
        )
        self.blacklist = Counter("bypass_blacklist", "blacklist records emitted", ["entity"], registry=r)
        self.batch_size = Histogram(
            "bypass_batch_size", "events per agent batch", ["agent"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.evicted = Counter(
            "bypass_state_evicted",
            "keys dropped from the state tables as evictable (tombstone on the changelog)",
            ["entity"],
            registry=r,
        )
        self.order_held = Gauge(
            "bypass_order_held_events", "events held back for event-time order", registry=r
        )
        self.order_paused = Gauge(
            "bypass_order_paused_partitions",
            "source partitions paused because held-back events reached BYPASS_ORDER_MAX_HELD",
            registry=r,
        )
        self.order_pauses = Counter(
            "bypass_order_pauses",
            "times held-back events reached the cap and sources were paused",
            registry=r,
        )
        self.order_out_of_order = Counter(
            "bypass_order_out_of_order",
            "events that reached an entity partition below what it had already released "
            "(a caught-up source that had no data yet, or a change of partition owner)",
            ["entity"],
            registry=r,
        )
        self.dependency_retries = Counter(
            "bypass_dependency_retries",
            "batches retried because a dependency (Redis lists) did not answer",
            ["entity"],
            registry=r,
        )
        self.dependency_waiting = Gauge(
            "bypass_dependency_waiting", "1 while a batch waits for a dependency to answer", registry=r
        )
        self.ruleset_info = Gauge(
            "bypass_ruleset_info", "1 for the active rule-set version", ["version"], registry=r
        )
        self.ruleset_swaps = Counter("bypass_ruleset_swaps", "rule sets activated", registry=r)
        self.ruleset_rejected = Counter(
            "bypass_ruleset_rejected", "broken rule sets seen on the topic", registry=r
        )
        self.publish_to_active = Gauge(
            "bypass_ruleset_publish_to_active_seconds", "last rule-set publish to active delay", registry=r
        )
        self._active_version: str | None = None

    def set_ruleset(self, version: str) -> None:
        if self._active_version is not None:
            self.ruleset_info.remove(self._active_version)
        self.ruleset_info.labels(version=version).set(1)
        self._active_version = version

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a metrics endpoint
        """Serve ``/metrics`` on ``port`` in a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
