"""``bypass serve``: the check API (and its console) over the Redis blacklist mirror.

- :mod:`streams.serve.core`: the pure parts: check answers, batch parsing, ``until``, tokens;
- :mod:`streams.serve.freshness`: the pipeline's event-time watermark, refreshed in the
  background from what the workers publish (``streams.core.workers.read_workers``);
- :mod:`streams.serve.app`: the Starlette app (``create_app``), run by uvicorn.
"""
