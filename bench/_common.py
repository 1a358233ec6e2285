"""Shared by the benchmarks: where the real parts are.

``stack_parts("kafka", "clickhouse")`` yields the addresses of the parts a benchmark
needs: the ``BYPASS_*`` addresses when the environment gives them, else a private
local stack in a temporary directory (the parts not needed are not started), torn
down when the block ends.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ENV = {"kafka": "BYPASS_KAFKA_BOOTSTRAP", "clickhouse": "BYPASS_CLICKHOUSE_URL", "redis": "BYPASS_REDIS_URL"}
# an address nothing listens on: marks a part as external so the stack does not start it
_UNUSED = {"kafka": "127.0.0.1:1", "clickhouse": "http://127.0.0.1:1", "redis": "redis://127.0.0.1:1/0"}


@dataclass(frozen=True)
class Parts:
    addresses: dict[str, str]
    stack: Any = None  # streams.local.stack.Stack when this benchmark started its own parts

    def pid(self, part: str) -> int | None:
        """The pid of a part this benchmark started (None for an external one)."""
        if self.stack is None:
            return None
        return next((p.pid for p in self.stack.status() if p.name == part), None)


@contextmanager
def stack_parts(*needed: str) -> Iterator[Parts]:
    given = {part: os.environ[name] for part, name in _ENV.items() if os.environ.get(name)}
    if all(part in given for part in needed):
        yield Parts(given)
        return
    from streams.local.stack import Stack

    external = {part: given.get(part, _UNUSED[part]) for part in _ENV if part in given or part not in needed}
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        stack = Stack(Path(tmp) / "stack", external=external, die_with_parent=True, health_timeout_s=60)
        addresses = stack.up().addresses
        try:
            yield Parts(dict(addresses), stack)
        finally:
            stack.down(purge=True)
