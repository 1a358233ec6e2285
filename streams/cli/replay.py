"""``bypass replay``: re-run the raw topics over a time range through the live code path."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from features import format_duration, format_ms
from streams.cli.params import TIME, DurationParam
from streams.replay import Replay, ReplayError, ReplayOptions, ReplaySummary

_HELP = """Replay the raw topics over [FROM, TO) to backfill or backtest labels.

\b
Replay reads the raw event topics again, with its own Kafka reader that never joins
or commits to the live consumer group (the live workers do not notice it), and runs
the events through exactly the same decoding, features and rules as the live
pipeline. The same events and the same rule set give the same hits, with the same
hit ids, as live.

\b
Which events:
  --from / --to    the time range, by the events' own time. ISO 8601
                   (2026-11-01T10:00:00Z, or 2026-11-01 10:00 meaning UTC), epoch
                   milliseconds, or relative to now: -1d or 1d (a day ago),
                   now-2h30m, now, today, yesterday (00:00 UTC). Only events with
                   time in [FROM, TO) produce hits.
  --warmup         how much earlier history to read first, to rebuild the windowed
                   state (counts over 30 days need the 30 days before FROM). These
                   events produce no hits. 'auto' (default) = the longest window of
                   the feature spec; or a duration such as 30d, 12h, 1h30m, 0.
  --topics         raw topics to read (default: BYPASS_RAW_TOPICS).
  --source         kafka (default): the raw topics, within their retention;
                   archive: the event archive in ClickHouse (risk_events, written
                   by `bypass sink clickhouse`), for ranges Kafka no longer holds.
                   Same order, same hit ids; the warm-up reads the archive too.

\b
Which rules:
  --rules FILE        a rule-set file (validated first), e.g. to backtest a change
                      before publishing it;
  --rules-version V   a version published on the rules topic;
  (neither)           the latest published version.

\b
Where the hits go (--out):
  none        nowhere: with --compare this is a backtest;
  jsonl       one bypass.hits JSON object per line, to stdout or --out-file;
  clickhouse  into risk_hits through the live writer's idempotent path: running
              the same replay twice adds no rows. Each hit carries the run id
              (--run-id, default replay-<time>-<random>); its hit id equals the
              live hit's id. Use --run-id live to backfill a gap in the live
              labels after an outage; only such a live backfill also writes
              the blacklist entries (to risk_blacklist).

\b
--emit-blacklist (with --run-id live) also produces the backfill's blacklist
entries to the blacklist topic, as the live worker does, so the Redis mirror
applies them and inline services see them. Entries already expired are not
produced; replaying twice changes nothing in Redis. A backtest never emits.

--compare prints, per rule, the live hits already in ClickHouse for the range
(run id 'live'), the replayed hits, and how many were added and removed
(matched by event and rule, so it also works across rule-set versions).

\b
Long runs: a progress bar (events, events/s, time left) goes to stderr. Ctrl-C
finishes the current batch, saves a checkpoint and prints how to continue:
--resume --run-id ID picks up exactly there (state included), giving the same
result as a run without the stop. Malformed messages, and events whose processing
raises (the live worker dead-letters exactly the same ones), are counted and the
replay goes on; with --dlq they are also sent to the dead-letter topic.

\b
Order: live and replay apply every entity's events in the same event-time order
across partitions and topics (the live worker holds events back while a partition
lags), so a backlog, several workers or a crash do not change the labels. Where
they can still differ (partitions all caught up and events arriving together; a
partition silent for longer than BYPASS_ORDER_IDLE_MS after a worker start; a late
event right after a restart) is listed in the README under "Event-time order".
--compare shows any difference.

\b
Finding the range in Kafka: offsets are looked up by Kafka message timestamp,
which the bypass producer SDK sets to the event time; a margin of
BYPASS_REPLAY_SKEW_MS (default 1 h) on both sides absorbs producers whose
timestamps differ a little. Replay never reads or writes the live workers'
consumer group.

\b
Examples:
  bypass replay --from -1d --to now --rules new.yaml --compare
  bypass replay --from 2026-11-01 --to 2026-11-02 --rules new.yaml --compare
  bypass replay --from 2026-11-01T00:00 --to 2026-11-01T06:00 --out clickhouse --run-id live
  bypass replay --from 1793491200000 --to 1793577600000 --out jsonl --out-file hits.jsonl
"""


def _warmup(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value.strip().lower() != "auto":
        DurationParam(allow_zero=True).convert(value, param, ctx)  # fail early with a clear message
    return value


@click.command(help=_HELP, context_settings={"max_content_width": 100})
@click.option("--from", "from_ms", metavar="T1", type=TIME, help="start of the range (inclusive)")
@click.option("--to", "to_ms", metavar="T2", type=TIME, help="end of the range (exclusive)")
@click.option(
    "--topics", metavar="TOPIC,...", help="raw topics, comma-separated (default: BYPASS_RAW_TOPICS)"
)
@click.option(
    "--rules", "rules_file", type=click.Path(path_type=Path), help="rule-set YAML file to replay with"
)
@click.option("--rules-version", metavar="V", help="a published rule-set version (default: the latest)")
@click.option(
    "--warmup", default="auto", show_default=True, callback=_warmup, help="auto or a duration (30d, 12h)"
)
@click.option(
    "--out",
    type=click.Choice(["clickhouse", "jsonl", "none"]),
    default="none",
    show_default=True,
    help="where the hits go",
)
@click.option("--out-file", type=click.Path(path_type=Path), help="file for --out jsonl (default: stdout)")
@click.option("--run-id", metavar="ID", help="run id put on every hit (default: replay-<time>-<random>)")
@click.option("--compare", is_flag=True, help="compare with the live hits in ClickHouse, per rule")
@click.option("--resume", is_flag=True, help="continue the run --run-id from its checkpoint")
@click.option(
    "--dlq", is_flag=True, help="send malformed messages and processing errors to the dead-letter topic"
)
@click.option(
    "--source",
    type=click.Choice(["kafka", "archive"]),
    default="kafka",
    show_default=True,
    help="read the raw topics, or the ClickHouse event archive (risk_events) beyond Kafka's retention",
)
@click.option(
    "--emit-blacklist",
    is_flag=True,
    help="with --run-id live: also produce the blacklist entries to the blacklist topic (Redis mirror)",
)
@click.option("--no-progress", is_flag=True, help="no progress bar")
def replay(
    from_ms: int | None,
    to_ms: int | None,
    topics: str | None,
    rules_file: Path | None,
    rules_version: str | None,
    warmup: str,
    out: str,
    out_file: Path | None,
    run_id: str | None,
    compare: bool,
    resume: bool,
    dlq: bool,
    source: str,
    emit_blacklist: bool,
    no_progress: bool,
) -> None:
    from rich.console import Console

    from streams.settings import Settings

    settings = Settings()
    console = Console(stderr=True)
    options = ReplayOptions(
        from_ms=from_ms,
        to_ms=to_ms,
        topics=tuple(t.strip() for t in topics.split(",") if t.strip()) if topics else (),
        rules_file=rules_file,
        rules_version=rules_version,
        warmup=warmup,
        out=out,
        out_file=out_file,
        run_id=run_id,
        compare=compare,
        resume=resume,
        dlq=dlq,
        emit_blacklist=emit_blacklist,
        source=source,
        progress=not no_progress,
    )
    runner = Replay(settings, options, console=console)

    def on_sigint(signum: int, frame: Any) -> None:
        if runner.stop_requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        console.print("[yellow]stopping: finishing the current batch and saving a checkpoint ...[/]")
        runner.request_stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        summary = runner.run()
    except KeyboardInterrupt:
        raise ReplayError(
            "interrupted twice: stopped without a new checkpoint (an older one may exist)"
        ) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    print_summary(console, summary)
    if summary.interrupted:
        console.print(
            f"interrupted; checkpoint saved to {summary.checkpoint}.\n"
            f"continue with: bypass replay --resume --run-id {summary.run_id}",
            highlight=False,
        )
        sys.exit(130)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_summary(console: Any, summary: ReplaySummary) -> None:
    from rich.table import Table

    s = summary.stats
    table = Table(title=f"replay {summary.run_id}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    rate = s.messages / s.elapsed_s if s.elapsed_s > 0 else 0.0
    rows = [
        ("range", f"[{format_ms(summary.from_ms)}, {format_ms(summary.to_ms)})"),
        ("warm-up", format_duration(summary.warmup_ms)),
        ("topics", f"{', '.join(summary.topics)} ({summary.partitions} partitions)"),
        ("rule set", summary.ruleset_version),
        ("messages read", f"{s.messages:,}"),
        (
            "events",
            f"{s.warmup_events + s.in_range_events:,} "
            f"({s.warmup_events:,} warm-up, {s.in_range_events:,} in range)",
        ),
        ("entity updates", f"{s.applied:,} (one per event and entity kind)"),
        ("outside the range", f"{s.outside_range:,}"),
        ("malformed", f"{s.malformed:,}"),
        ("processing errors", f"{s.processing_errors:,} (dead letters, as live)"),
        ("sent to the DLQ", f"{s.dlq_sent:,}" if s.dlq_sent else "none (add --dlq to send them)"),
        ("duplicates / late", f"{s.duplicates:,} / {s.late_rejected:,}"),
        ("rule errors", f"{s.rule_errors:,}"),
        (
            "values skipped",
            ", ".join(f"{k} {v:,}" for k, v in sorted(s.values_skipped.items()))
            + " (a feature's field held what it cannot use, e.g. a string for a sum)"
            if s.values_skipped
            else "none",
        ),
        ("hits", f"{s.hits:,}"),
        (
            "blacklist entries",
            f"{s.blacklist:,}"
            + (" (written to risk_blacklist)" if summary.blacklist_written else " (counted only)")
            + (
                f"; {s.blacklist_emitted:,} produced to the blacklist topic, {s.blacklist_expired:,} "
                "already expired"
                if s.blacklist_emitted or s.blacklist_expired
                else ""
            ),
        ),
        ("output", f"{summary.out}: {summary.out_target}"),
        ("time", f"{s.elapsed_s:,.1f} s ({rate:,.0f} messages/s)"),
    ]
    if s.malformed_by_reason:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.malformed_by_reason.items()))
        rows.insert(5, ("malformed by reason", reasons))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if s.hits_by_rule and summary.compare is None:
        per_rule = Table(title="hits per rule", title_justify="left")
        per_rule.add_column("rule")
        per_rule.add_column("hits", justify="right")
        for rule_id, n in sorted(s.hits_by_rule.items()):
            per_rule.add_row(rule_id, f"{n:,}")
        console.print(per_rule)
    if summary.compare is not None:
        cmp = Table(title="live vs replay, per rule", title_justify="left")
        labelled = any(
            r.live_precision is not None or r.replayed_precision is not None for r in summary.compare
        )
        cols = ["rule", "live", "replayed", "added", "removed"]
        if labelled:  # outcome labels exist: judge the change on outcomes, not hit counts
            cols += ["P live", "R live", "P replay", "R replay"]
            cmp.caption = "P precision, R recall of the entities flagged, against those labelled bad"
        for col in cols:
            cmp.add_column(col, justify="left" if col == "rule" else "right")
        for row in summary.compare:
            style = "yellow" if row.changed else None
            cells = [row.rule_id, str(row.live), str(row.replayed), f"+{row.added}", f"-{row.removed}"]
            if labelled:
                cells += [
                    _share(row.live_precision),
                    _share(row.live_recall),
                    _share(row.replayed_precision),
                    _share(row.replayed_recall),
                ]
            cmp.add_row(*cells, style=style)
        if not summary.compare:
            cmp.add_row("(no hits on either side)", "0", "0", "+0", "-0")
        console.print(cmp)
    # the warnings (summary.warnings) were printed when they arose: not again here
