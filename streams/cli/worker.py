"""``bypass worker``: run live Faust workers, one per core by default
(:mod:`streams.live.supervisor`); scale out further by starting more on other hosts."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option(
    "--verbose", "-v", is_flag=True, help="also Faust's own start-up lines (banner tables, services)"
)
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="worker processes in the consumer group, under one supervisor that restarts a dead one "
    "(default: BYPASS_WORKER_PROCESSES; 0 = one per usable core; 1 = this process alone, "
    "no supervisor)",
)
@click.option("--child", type=click.IntRange(min=0), default=None, hidden=True, help="run as child I")
def worker(verbose: bool, processes: int | None, child: int | None) -> None:
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
      BYPASS_WORKER_PROCESSES                       processes (0 = one per usable core)

    \b
    The default is one process per usable core (CPU affinity, capped by a
    container's CPU quota): one Faust worker runs on one core, so that is what
    uses a node. --processes 1 is the single process of old, with no supervisor.
    With N processes, worker i serves /metrics and /healthz on BYPASS_METRICS_PORT + i,
    keeps its tables under BYPASS_STATE_DIR/faust/process-i, tags its log lines
    "[worker i]" and reports itself on its own (`bypass status --all` lists each).
    The supervisor restarts a worker that dies (back-off 1 s doubling to 30 s) and
    passes SIGTERM / Ctrl-C on to all. Where an orchestrator runs one container per
    worker (docker compose, Kubernetes), set BYPASS_WORKER_PROCESSES=1.

    The worker starts with the latest rule set on the rules topic and switches to each
    version published later (`bypass rules publish`). It logs a few lines at start,
    one when it is ready, then a status line every BYPASS_WORKER_STATUS_S; check it with
    `bypass status`. Stop it with Ctrl-C or SIGTERM.
    """
    from streams.live import supervisor
    from streams.settings import get_settings

    settings = get_settings()
    if child is not None:  # one of a supervisor's workers
        from streams.cli.params import setup_logging
        from streams.live.worker import LiveWorker

        setup_logging(settings, tag=f"worker {child}")
        datadir = supervisor.child_datadir(settings.state_dir, child)
        LiveWorker(settings, verbose=verbose, datadir=datadir).run()
        return
    n = supervisor.resolve_processes(processes, settings.worker_processes)
    if n == 1:
        from streams.live.worker import run_worker

        run_worker(settings, verbose=verbose)
        return
    from streams.core import kafka

    # no broker: one clear line and exit 1, as a single worker does, not N crash-looping children
    kafka.check_reachable(settings)
    sys.exit(supervisor.supervise("worker", supervisor.worker_specs(settings, n, verbose=verbose), settings))
