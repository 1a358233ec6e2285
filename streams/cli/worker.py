"""``bypass worker``: run one live Faust worker (scale out by starting more)."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--verbose", "-v", is_flag=True, help="also Faust's own start-up lines (banner tables, services)"
)
def worker(verbose: bool) -> None:
    """Run a live worker: raw topics -> features -> rules -> hits and blacklist.

    \b
    Everything comes from BYPASS_* settings (see `bypass settings`):
      BYPASS_KAFKA_BOOTSTRAP, BYPASS_RAW_TOPICS     where events come from
      BYPASS_FEATURES_SPEC, BYPASS_PHONE_HASH_KEY   feature spec, phone hashing key
      BYPASS_APP_ID                                 consumer group (workers sharing it
                                                    split the partitions)
      BYPASS_HITS_TOPIC, BYPASS_BLACKLIST_TOPIC, BYPASS_DLQ_TOPIC, BYPASS_RULES_TOPIC
      BYPASS_TABLE_STANDBY_REPLICAS, BYPASS_TABLE_STORE, BYPASS_WORKER_BATCH_SIZE
      BYPASS_CONSUMER_SESSION_TIMEOUT_MS, BYPASS_CONSUMER_REBALANCE_TIMEOUT_MS
      BYPASS_METRICS_PORT                           Prometheus /metrics and /healthz
                                                    (0 = off; taken: a free port, logged)
      BYPASS_WORKER_STATUS_S                        seconds between one-line status logs

    The worker starts with the latest rule set on the rules topic and switches to each
    version published later (`bypass rules publish`). It logs a few lines at start,
    one when it is ready, then a status line every BYPASS_WORKER_STATUS_S; check it with
    `bypass status`. Stop it with Ctrl-C or SIGTERM.
    """
    from streams.live.worker import run_worker
    from streams.settings import get_settings

    run_worker(get_settings(), verbose=verbose)
