"""``bypass produce --file EVENTS.jsonl [--topic T]``: send a file of events with the SDK."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from features.errors import ConfigError

#: How long ``produce`` waits for the broker to confirm the events sent.
FLUSH_TIMEOUT_S = 30.0


def _show(progress: Any, task: Any, confirmed: int, invalid: int) -> None:
    elapsed = progress.tasks[0].elapsed or 0.0
    progress.update(task, completed=confirmed + invalid, rate=confirmed / elapsed if elapsed else 0.0)


@click.command()
@click.option(
    "--file", "events_file", required=True, metavar="EVENTS.jsonl", help="one JSON event per line; - = stdin"
)
@click.option(
    "--topic", default=None, metavar="T", help="raw topic (default: the first of BYPASS_RAW_TOPICS)"
)
@click.option(
    "--skip-invalid", is_flag=True, help="report invalid lines and go on (default: stop at the first)"
)
def produce(events_file: str, topic: str | None, skip_invalid: bool) -> None:
    """Validate and send events to a raw topic, with a progress bar.

    Each line is one JSON event: event_id, type, ts (event time, epoch ms) and user_id
    are required; device_id, ip, phone, geo {lat, lon, city} and attrs are optional.
    Kafka key = user id, message timestamp = the event's ts. An invalid line stops the
    command before anything after it is sent (line number and reason), unless
    --skip-invalid is given. The bar counts events the broker confirmed. Exits 1 if the
    broker does not confirm every event (within 30 s after the last one was sent).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.core import kafka
    from streams.core.envelope import InvalidEventError
    from streams.producer import EventProducer
    from streams.settings import get_settings

    if events_file == "-":
        handle = sys.stdin.buffer
        total = None
    else:
        path = Path(events_file)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise ConfigError(
                f"cannot read events {events_file}: {exc.strerror or exc}", path=events_file
            ) from None
        with path.open("rb") as counter:
            total = sum(1 for line in counter if line.strip())
    settings = get_settings()
    kafka.check_reachable(settings)  # one clear line now, not "unconfirmed" 30 s later
    producer = EventProducer(settings, topic=topic)
    console = Console(stderr=True)
    sent = invalid = 0
    columns = [
        TextColumn("[bold]produce[/] {task.fields[topic]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f} ev/s"),
        TimeElapsedColumn(),
    ]
    with handle, Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("produce", total=total, topic=producer.topic, rate=0.0)
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
                producer.send(event)
            except (orjson.JSONDecodeError, InvalidEventError) as exc:
                message = getattr(exc, "message", None) or f"not valid JSON: {exc}"
                if not skip_invalid:
                    producer.flush()
                    raise ConfigError(
                        f"{events_file}:{lineno}: {message} (sent {sent} events before it; "
                        "--skip-invalid to go on)",
                        path=events_file,
                        line=lineno,
                    ) from None
                invalid += 1
                console.print(f"[yellow]skipped[/] {events_file}:{lineno}: {message}")
                continue
            sent += 1
            if sent % 1000 == 0:
                producer.poll(0)
                _show(progress, task, producer.confirmed, invalid)
        # the bar reaches the end only with what the broker confirmed
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while producer.in_flight and time.monotonic() < deadline:
            producer.poll(0.2)
            _show(progress, task, producer.confirmed, invalid)
        report = producer.flush(timeout_s=1.0)
        _show(progress, task, report.delivered + report.failed, invalid)
    report.raise_for_errors()
    tail = f", {invalid} invalid skipped" if invalid else ""
    click.echo(f"sent {report.delivered} events to {producer.topic}{tail}")
