"""Serve the chdb (ClickHouse 26.9) engine on loopback HTTP and native ports.

Run by ``streams.local.stack`` as a child process::

    python -m streams.local.chdb_server --config-dir DIR --data-dir DATA

``DIR`` holds the ``config.xml`` (listen host and ports) that the embedded server reads
from its working directory. The listeners live while one long ``_chdb.query`` call runs;
SIGTERM stops the process and the data stays in ``DATA``.
"""

from __future__ import annotations

import argparse
import os
import sys

# One row per second: the call (and so the listeners) lives for about 31 years.
_SERVE = (
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    "SELECT sleepEachRow(1) FROM numbers(1000000000) SETTINGS max_block_size=1 FORMAT Null"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.local.chdb_server")
    parser.add_argument("--config-dir", required=True, help="directory holding config.xml")
    parser.add_argument("--data-dir", required=True, help="ClickHouse data directory")
    args = parser.parse_args(argv)
    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    os.chdir(args.config_dir)
    from chdb import _chdb  # heavy import: only in the child

    print(f"chdb serving, config {os.getcwd()}/config.xml, data {data_dir}", flush=True)
    try:
        _chdb.query(_SERVE, "TabSeparated", path=data_dir)  # type: ignore[attr-defined]
    except Exception as exc:
        print(f"chdb server failed: {exc}", file=sys.stderr, flush=True)
        return 1
    # The call only returns early when it failed (chdb prints the error, e.g. a port
    # already in use, to stderr itself and returns an empty result).
    print("chdb server stopped: the serving query ended (see the error above)", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
