"""Prometheus metrics of the live worker (served on ``BYPASS_METRICS_PORT``, path ``/metrics``;
``/healthz`` on the same port: :mod:`streams.live.health`).

name                                        type       labels            what
bypass_events_in_total                      counter    topic             raw messages read
bypass_dlq_total                            counter    reason            messages sent to the DLQ
bypass_events_applied_total                 counter    entity            events applied to state
bypass_events_duplicate_total               counter    entity            redelivered events (no-op)
bypass_events_late_total                    counter    entity            events rejected as too late
bypass_processing_latency_seconds           histogram                    the worker read the raw event
                                                                         -> its hit sent (time in the
                                                                         worker: a backlog or replayed
                                                                         event is not counted old)
bypass_event_time_lag_seconds               gauge                        wall clock - the newest event
                                                                         time processed (grows while
                                                                         idle or behind)
bypass_consumer_lag                         gauge      topic, partition  raw messages not read yet, per
                                                                         raw partition this worker owns
bypass_partitions_assigned                  gauge      topic             partitions this worker owns
bypass_state_keys                           gauge      entity            keys in the state table (owned
                                                                         and standby partitions; memory
                                                                         store; with each status line)
bypass_state_bytes                          gauge      entity            bytes of their state snapshots
bypass_worker_ready                         gauge                        1 once partitions are assigned
                                                                         and restored, 0 while starting
                                                                         or rebalancing
bypass_worker_heartbeat_timestamp_seconds   gauge                        unix time the worker's event
                                                                         loop last ticked (liveness)
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
bypass_ruleset_publish_to_active_seconds    gauge                        last publish -> active delay,
                                                                         for a version published while
                                                                         the worker ran (a restart
                                                                         loading it does not set it)
bypass_ruleset_published_timestamp_seconds  gauge                        when the active version was
                                                                         published (unix time)

Labelled counters start at 0 for the label values known up front (DLQ reasons, entity kinds,
raw topics, rules of the active set with their mode), so a rate() works before the first
event.  The sinks (``bypass sink ...``) serve their own metrics (see :mod:`sinks.runner`).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["DLQ_REASONS", "Metrics"]

#: Every reason a worker dead-letters with (initialized at 0).
DLQ_REASONS = (
    "not_json",
    "missing_field",
    "wrong_type",
    "bad_value",
    "unknown_field",
    "too_large",
    "too_deep",
    "ts_out_of_bounds",
    "ingest_error",
    "processing_error",
)

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"),
)  # fmt: skip
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
            "the worker reading the raw event to its hit being sent",
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
        self.published_at = Gauge(
            "bypass_ruleset_published_timestamp_seconds",
            "when the active rule-set version was published (unix time)",
            registry=r,
        )
        self.event_time_lag = Gauge(
            "bypass_event_time_lag_seconds",
            "wall clock minus the newest event time the worker processed",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "bypass_consumer_lag",
            "raw messages not read yet, per raw partition the worker owns",
            ["topic", "partition"],
            registry=r,
        )
        self.partitions_assigned = Gauge(
            "bypass_partitions_assigned", "partitions this worker owns", ["topic"], registry=r
        )
        self.state_keys = Gauge(
            "bypass_state_keys", "keys in the state table of an entity kind", ["entity"], registry=r
        )
        self.state_bytes = Gauge(
            "bypass_state_bytes", "bytes of the state snapshots of an entity kind", ["entity"], registry=r
        )
        self.ready = Gauge("bypass_worker_ready", "1 once partitions are assigned and restored", registry=r)
        self.heartbeat = Gauge(
            "bypass_worker_heartbeat_timestamp_seconds",
            "unix time the worker's event loop last ticked",
            registry=r,
        )
        self._active_version: str | None = None
        self._lag_labels: set[tuple[str, str]] = set()
        self._assigned_topics: set[str] = set()
        self.init_labels()

    def init_labels(
        self,
        *,
        topics: Iterable[str] = (),
        entities: Iterable[str] = (),
        rules: Iterable[tuple[str, str]] = (),
        features: Iterable[str] = (),
    ) -> None:
        """Create the labelled series known up front at 0 (a series appears in /metrics
        only once it has a value): DLQ reasons always, and the given raw topics, entity
        kinds, ``(rule_id, mode)`` pairs and feature names."""
        for reason in DLQ_REASONS:
            self.dlq.labels(reason=reason)
        for topic in topics:
            self.events_in.labels(topic=topic)
        for entity in entities:
            for counter in (
                self.applied,
                self.duplicates,
                self.late,
                self.blacklist,
                self.evicted,
                self.order_out_of_order,
                self.dependency_retries,
            ):
                counter.labels(entity=entity)
            self.state_keys.labels(entity=entity)
            self.state_bytes.labels(entity=entity)
            self.batch_size.labels(agent=f"entity-{entity}")
        if entities:
            self.batch_size.labels(agent="ingest")
        for rule_id, mode in rules:
            self.hits.labels(rule_id=rule_id, mode=mode)
            self.rule_errors.labels(rule_id=rule_id)
        for name in features:
            self.feature_skipped.labels(feature=name)

    def set_consumer_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """The lag of each owned raw partition; partitions no longer owned are removed."""
        current = {(topic, str(partition)) for topic, partition in lags}
        for topic, label in self._lag_labels - current:
            self.consumer_lag.remove(topic, label)
        for (topic, partition), lag in lags.items():
            self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
        self._lag_labels = current

    def set_assigned(self, counts: dict[str, int]) -> None:
        """Partitions owned per topic (topics no longer owned go to 0)."""
        for topic in self._assigned_topics - set(counts):
            self.partitions_assigned.labels(topic=topic).set(0)
        for topic, n in counts.items():
            self.partitions_assigned.labels(topic=topic).set(n)
        self._assigned_topics |= set(counts)

    def set_ruleset(self, version: str) -> None:
        if self._active_version is not None:
            self.ruleset_info.remove(self._active_version)
        self.ruleset_info.labels(version=version).set(1)
        self._active_version = version

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a metrics endpoint
        """Serve ``/metrics`` on ``port`` in a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
