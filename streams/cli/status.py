"""``bypass status``: is the worker up? Reads its ``/healthz`` (:mod:`streams.live.health`);
``--all``: every running worker and writer, the dependencies and the last hour's dead letters
(:mod:`streams.core.overview`)."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request

import click
import orjson


@click.command()
@click.option("--url", default=None, metavar="URL", help="health URL (default: http://HOST:PORT/healthz)")
@click.option(
    "--port",
    type=int,
    default=None,
    help="the worker's metrics port (default: BYPASS_METRICS_PORT; the worker logs the one it chose)",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="the worker's host")
@click.option("--json", "as_json", is_flag=True, help="print the /healthz JSON as it came")
@click.option("--timeout", type=float, default=3.0, show_default=True, help="seconds to wait for an answer")
@click.option(
    "--wait",
    type=float,
    default=0.0,
    metavar="SECONDS",
    help="keep asking until the worker is healthy, for up to this long (a worker just started)",
)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="one screen for on-call: every running worker and writer (as they report on "
    "BYPASS_WORKERS_TOPIC), Kafka/ClickHouse/Redis reachable, dead letters of the last hour",
)
def status(
    url: str | None, port: int | None, host: str, as_json: bool, timeout: float, wait: float, everything: bool
) -> None:
    """Show whether a live worker is up: ready, partitions, rule set, events, lag, and
    whether it waits for a dependency (Redis).

    Exits 0 when the worker answers healthy (HTTP 200), 1 otherwise: not reachable,
    starting or rebalancing, or waiting on a dependency longer than
    BYPASS_HEALTH_MAX_WAIT_MS. Use it before producing (`bypass status --wait 30`), or
    as a probe.
    """
    from streams.live.health import format_health
    from streams.settings import get_settings

    settings = get_settings()
    if everything:
        _overview(settings, as_json)
    if url is None:
        if port is None:
            port = settings.metrics_port
        if not port:
            raise click.UsageError("BYPASS_METRICS_PORT is 0 (no endpoint): give --port or --url")
        url = f"http://{host}:{port}/healthz"
    deadline = time.monotonic() + wait
    while True:
        code, raw, error = _ask(url, timeout)
        if code == 200 or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if error is not None:
        click.echo(
            f"no worker answers at {url}: {error}. Is `bypass worker` running? It logs the port it "
            "serves on (`metrics on http://...`), which may differ from BYPASS_METRICS_PORT when that "
            "was taken.",
            err=True,
        )
        sys.exit(1)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        click.echo(f"{url} answered HTTP {code}, not with JSON: is it a bypass worker?", err=True)
        sys.exit(1)
    if not as_json and body.get("app_id") not in (None, settings.app_id):
        click.echo(
            f"note: this worker's app id is {body['app_id']!r}, BYPASS_APP_ID is {settings.app_id!r}",
            err=True,
        )
    if as_json:
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_health(code, body, settings.raw_topics))
    sys.exit(0 if code == 200 else 1)


def _overview(settings: object, as_json: bool) -> None:
    """``--all``: print the cluster view and exit 0 when everything is healthy, else 1."""
    from streams.core.overview import gather, render
    from streams.settings import Settings

    assert isinstance(settings, Settings)  # noqa: S101 - get_settings() gives Settings
    view = gather(settings)
    if as_json:
        click.echo(orjson.dumps(view.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(view))
    sys.exit(0 if view.healthy else 1)


def _ask(url: str, timeout: float) -> tuple[int, bytes, str | None]:
    """(HTTP status, body, None) or (0, b"", why no answer came)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a user-given URL
            return int(response.status), response.read(), None
    except urllib.error.HTTPError as exc:  # 503: an answer, not a failure to connect
        return exc.code, exc.read(), None
    except (OSError, ValueError) as exc:
        return 0, b"", str(getattr(exc, "reason", None) or exc)
