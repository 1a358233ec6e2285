"""The application around the pure packages: where events come from and where labels go.

Rooms (one per role; a change has one obvious place):

    streams/core/     what live and replay share: the event envelope, processing order,
                      the processor, the batch step, dead letters, engine assembly, Kafka
                      and ClickHouse clients, the rules topic
    streams/live/     the live worker: Faust app and agents, worker process, metrics
    streams/replay/   replay and backfill: reader, outputs, checkpoints, compare
    streams/cli/      the ``bypass`` command: one module per verb, shared parameters
    streams/local/    the local stack, the simulator, the demo and its evaluation
    settings.py       the one settings object (BYPASS_* variables)
    producer.py       the producer SDK for apps (EventProducer)
"""

from streams.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
