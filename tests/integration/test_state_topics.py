"""The topics a worker creates for its state: entity topics with the retention from settings,
compacted changelogs with their segment size, all with BYPASS_TOPIC_PARTITIONS partitions -
read back from the broker (not left to Faust's defaults, not to the broker's behaviour)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource, NewTopic

from streams.core import kafka
from streams.core.kafka import KafkaSetupError
from streams.live.worker import LiveWorker
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _worker(settings: Settings, **overrides: object) -> LiveWorker:
    return LiveWorker(
        settings.model_copy(
            update={"features_spec": ROOT / "examples" / "features.yaml", "metrics_port": 0, **overrides}
        )
    )


def _configs(settings: Settings, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    client = kafka.admin(settings)  # kept: a collected client cancels its futures
    described = client.describe_configs([resource])[resource].result(15)
    return {name: entry.value for name, entry in described.items()}


def test_a_worker_creates_its_state_topics_with_the_configured_partitions_and_configs(
    settings: Settings,
) -> None:
    worker = _worker(
        settings, topic_partitions=3, repartition_retention_ms=86_400_000, changelog_segment_ms=3_600_000
    )
    try:
        worker.prepare()
    finally:
        worker.follower.stop()
        worker.features_follower.stop()
        if worker.reporter is not None:
            worker.reporter.stop()
    s = worker.settings
    entities = worker.pipeline.entities
    assert entities == ["user", "device", "ip"]
    entity_topics = [f"{s.app_id}-entity-{e}" for e in entities]
    changelogs = [f"{s.app_id}-entity-{e}-changelog" for e in entities]
    counts: dict[str, int] = {}
    for topic, _ in kafka.topic_partitions(s, [*entity_topics, *changelogs]):
        counts[topic] = counts.get(topic, 0) + 1
    assert counts == dict.fromkeys([*entity_topics, *changelogs], 3)
    for topic in entity_topics:
        config = _configs(s, topic)
        assert config.get("retention.ms") == "86400000", (topic, config)
        assert config.get("cleanup.policy", "delete") == "delete", (topic, config)
    for topic in changelogs:
        config = _configs(s, topic)
        assert config.get("cleanup.policy") == "compact", (topic, config)
        assert config.get("segment.ms") == "3600000", (topic, config)


def test_a_changelog_with_another_partition_count_stops_the_worker_with_the_reason(
    settings: Settings,
) -> None:
    changelog = f"{settings.app_id}-entity-user-changelog"
    client = kafka.admin(settings)
    client.create_topics([NewTopic(changelog, 2, 1)])[changelog].result(15)
    worker = _worker(settings, topic_partitions=4)
    with pytest.raises(KafkaSetupError) as err:
        worker.pipeline.ensure_state_topics()
    message = str(err.value)
    assert changelog in message and "2 partitions" in message and "BYPASS_TOPIC_PARTITIONS is 4" in message
