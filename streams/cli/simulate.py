"""``bypass simulate``: synthetic traffic with ground truth (see ``streams.local.simulate``)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features import format_ms
from streams.local.simulate import (
    DEFAULT_START_MS,
    Mix,
    SimConfig,
    Simulator,
    parse_duration_s,
    parse_mix,
    parse_rate,
    parse_start_ms,
)
from streams.local.simulate import (
    pace as pace_events,
)

_console = Console(stderr=True)


def write_truth(path: Path, truth: list[dict[str, str]]) -> None:
    """One JSON object per line: ``{"entity", "key", "scenario"}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in truth))


def _progress(events: Iterator[dict[str, Any]], total: int, label: str) -> Iterator[dict[str, Any]]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[eps]:>8.0f} ev/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_console, transient=False) as progress:
        task = progress.add_task(label, total=total, eps=0.0)
        t0 = time.monotonic()
        for n, event in enumerate(events, 1):
            yield event
            if n % 500 == 0 or n == total:
                elapsed = max(time.monotonic() - t0, 1e-9)
                progress.update(task, completed=n, eps=n / elapsed)


def _to_jsonl(events: Iterator[dict[str, Any]], out: IO[bytes]) -> None:
    for event in events:
        out.write(orjson.dumps(event) + b"\n")


def _to_kafka(events: Iterator[dict[str, Any]], topic: str | None) -> str:
    from streams.core import kafka
    from streams.producer import EventProducer
    from streams.settings import get_settings

    settings = get_settings()
    target = topic or settings.raw_topics[0]
    kafka.ensure_topics(settings, [target])
    producer = EventProducer(settings, topic=target)
    try:
        for event in events:
            producer.send(event)
    finally:
        report = producer.flush(timeout_s=60.0)
    report.raise_for_errors()
    return target


@click.command()
@click.option("--users", type=int, default=1000, show_default=True, help="population, bad accounts included")
@click.option("--rate", "rate_text", default="500/s", show_default=True, help="events per wall-clock second")
@click.option(
    "--duration", "duration_text", default="60s", show_default=True, help="wall-clock length (60s, 2m)"
)
@click.option("--seed", type=int, default=1, show_default=True, help="same seed + start = same events")
@click.option("--out", type=click.Choice(["jsonl", "kafka"]), default="jsonl", show_default=True)
@click.option(
    "--out-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("events.jsonl"),
    show_default=True,
    help="events file for --out jsonl ('-' = stdout)",
)
@click.option(
    "--truth",
    "truth_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="ground-truth file [default: truth.jsonl beside --out-file; for kafka or stdout: "
    "truth.jsonl in BYPASS_STATE_DIR]",
)
@click.option("--topic", default=None, help="Kafka topic [default: the first of BYPASS_RAW_TOPICS]")
@click.option(
    "--start",
    "start_text",
    default=str(DEFAULT_START_MS),
    show_default=True,
    help="first event time: ISO 8601 (UTC unless it says), epoch ms, -2d, yesterday ...; "
    "or 'now': the traffic ends at the current minute",
)
@click.option(
    "--time-scale",
    type=float,
    default=3600.0,
    show_default=True,
    help="event-time seconds per wall-clock second (3600: a 60 s run covers 60 h of events)",
)
@click.option("--mix", "mix_text", default="", help="actors per user, e.g. resale=0.02,farms=0.005,evasive=0")
@click.option(
    "--pace/--no-pace",
    default=None,
    help="hold to --rate in wall-clock time [default: on for kafka, off for jsonl]",
)
def simulate(
    users: int,
    rate_text: str,
    duration_text: str,
    seed: int,
    out: str,
    out_file: Path,
    truth_path: Path | None,
    topic: str | None,
    start_text: str,
    time_scale: float,
    mix_text: str,
    pace: bool | None,
) -> None:
    """Synthetic traffic with ground truth: normal users, account resale, device farms,
    credential stuffing and impossible travel.

    \b
    Writes exactly rate x duration events, in event-time order, as jsonl or to Kafka
    (through the producer SDK: key = user id, Kafka timestamp = event time), and
    truth.jsonl: one {"entity", "key", "scenario", "variant"} line per bad entity.
    Deterministic: the same options give the same bytes (with a fixed --start;
    'now' reads the clock).

    \b
    Time is compressed: event time runs --time-scale times faster than the wall clock,
    so a one-minute run covers 60 hours at the default scale (at least 24 h keeps the
    scenarios realistic). The live workers must allow lateness of about the
    cross-partition reordering times the scale (the demo uses 6 h).

    \b
    --mix names (per user, see streams.local.simulate.Mix): resale, travel, farms, stuffing;
    evasive = share of resale actors and stuffing campaigns that stay under the usual
    rules (still bad, in the truth); lookalikes = benign users who look bad (VPN exits
    abroad, big families on one device; not in the truth).
    """
    rate = parse_rate(rate_text)
    duration_s = parse_duration_s(duration_text)
    span_ms = round(duration_s * time_scale * 1000)
    start_ms = parse_start_ms(start_text, span_ms=span_ms, now_ms=time.time_ns() // 1_000_000)
    config = SimConfig(
        users=users,
        rate=rate,
        duration_s=duration_s,
        seed=seed,
        start_ms=start_ms,
        time_scale=time_scale,
        mix=parse_mix(mix_text) if mix_text else Mix(),
    )
    sim = Simulator(config)
    if config.compressed:
        _console.print(
            f"[yellow]warning:[/] the run covers {config.span_ms / 3_600_000:.1f} h of event time, "
            "under 24 h: "
            "scenario timings are compressed to fit and look less like the real thing "
            "(raise --time-scale or --duration)"
        )
    stdout = out == "jsonl" and str(out_file) == "-"
    if truth_path is None:
        if out == "kafka" or stdout:
            from streams.settings import Settings

            truth_path = Path(Settings().state_dir) / "truth.jsonl"  # never litter the working directory
            truth_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            truth_path = out_file.parent / "truth.jsonl"
    write_truth(truth_path, sim.truth)

    types: Counter[str] = Counter()

    def counted(events: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for event in events:
            types[event["type"]] += 1
            yield event

    paced = (out == "kafka") if pace is None else pace
    events: Iterator[dict[str, Any]] = counted(sim.events())
    if paced:
        events = pace_events(events, rate)
    events = _progress(events, config.total_events, f"simulate -> {out}")
    t0 = time.monotonic()
    if out == "kafka":
        where = f"topic {_to_kafka(events, topic)}"
    elif stdout:
        _to_jsonl(events, sys.stdout.buffer)
        where = "stdout"
    else:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        with out_file.open("wb") as fh:
            _to_jsonl(events, fh)
        where = str(out_file)
    elapsed = time.monotonic() - t0
    _summary(sim, types, where, truth_path, elapsed)


def _summary(sim: Simulator, types: Counter[str], where: str, truth_path: Path, elapsed: float) -> None:
    cfg = sim.config
    total = sum(types.values())
    table = Table(title="bypass simulate", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("events", f"{total:,} -> {where}")
    table.add_row("wall time", f"{elapsed:.1f} s ({total / max(elapsed, 1e-9):,.0f} events/s)")
    table.add_row("event time", f"{cfg.span_ms / 3_600_000:.1f} h from {format_ms(cfg.start_ms)}")
    table.add_row("time scale", f"{cfg.time_scale:g} (1 s of traffic = {cfg.time_scale:g} s of event time)")
    for name, n in sorted(types.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {name}", f"{n:,}")
    evasive = Counter(t["scenario"] for t in sim.truth if t["variant"] == "evasive")
    for scenario, n in sorted(sim.counts.items()):
        table.add_row(
            f"scenario {scenario}", f"{n} ({evasive[scenario]} evasive)" if evasive[scenario] else str(n)
        )
    for kind, n in sorted(Counter(x["kind"] for x in sim.lookalikes).items()):
        table.add_row(f"lookalike {kind}", f"{n} (benign, not in truth)")
    table.add_row("truth", str(truth_path))
    _console.print(table)
