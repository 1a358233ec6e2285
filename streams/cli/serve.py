"""``bypass serve``: the check API (and console) over the Redis blacklist mirror."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default=None, help="address to listen on (default BYPASS_SERVE_HOST, 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port to listen on (default BYPASS_SERVE_PORT, 8300)")
@click.option("--access-log", is_flag=True, help="log every request (method, path, status)")
def serve(host: str | None, port: int | None, access_log: bool) -> None:
    """Serve the check API: is an entity listed, with labels, expiry and freshness.

    \b
      GET  /v1/check/{entity}/{key}       one key; POST /v1/check: up to 100
      POST /v1/lists/{name}               add values   (token: BYPASS_SERVE_TOKEN)
      DELETE /v1/lists/{name}/{value}     remove one   (token)
      POST /v1/unblock/{entity}/{key}     {"until": "7d", "why": "..."} (token)
      GET  /healthz                       503 when Redis does not answer
      GET  /                              the web console (overview, rules, entities, lists)

    Reads answer from Redis only; when Redis is down they answer 503 with the reason,
    never "not listed". Every list change and unblock is recorded in ClickHouse
    (risk_list_changes). BYPASS_SERVE_READ_TOKEN, when set, guards the reads too.
    """
    import uvicorn

    from streams.cli.params import setup_logging
    from streams.serve.app import ServeConfig, create_app
    from streams.serve.console import settings_backend
    from streams.settings import get_settings

    settings = get_settings()
    setup_logging(settings)
    cfg = ServeConfig.from_settings(settings)
    bind_host = host or settings.serve_host
    bind_port = settings.serve_port if port is None else port
    writes = "token required" if cfg.write_token else "disabled (set BYPASS_SERVE_TOKEN)"
    reads = "token required" if cfg.read_token else "open"
    click.echo(
        f"bypass serve: http://{bind_host}:{bind_port}  kinds={','.join(cfg.kinds)}  "
        f"reads: {reads}  writes: {writes}",
        err=True,
    )
    uvicorn.run(
        create_app(cfg, console=settings_backend(settings)),
        host=bind_host,
        port=bind_port,
        log_level=settings.log_level.lower(),
        access_log=access_log,
        server_header=False,
    )
