"""One process on a node running N copies of a long-running verb, restarting any that dies.

``bypass worker --processes N`` and ``bypass sink clickhouse --processes N`` start N child
processes (``python -m streams <verb> --processes 1 --child I``) in the one consumer group
with the same settings, and supervise them:

- each child gets its own metrics port (:func:`child_port`) and, for workers, its own Faust
  data directory (:func:`child_datadir`); its log lines carry ``[worker I]``;
- a child that exits with a non-zero code or is killed by a signal is started again after a
  back-off (1 s, doubling up to 30 s; back to 1 s once a child has run for a minute), with
  a log line saying why; a child that exits with 0 (``--idle-exit``) is done;
- SIGTERM or SIGINT to the supervisor is forwarded to every child, which stops cleanly;
  a child still running after ``stop_timeout_s`` is killed. The children run in their own
  process group (Ctrl-C reaches them once, through the supervisor) and get SIGTERM when
  the supervisor dies (Linux ``PR_SET_PDEATHSIG``);
- a child that keeps failing within seconds of its start (a bad setting, a missing file)
  ``MAX_QUICK_FAILURES`` times in a row stops the whole group: exit code 1.

``--processes 1`` runs the verb in the one process, without a supervisor.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = [
    "MAX_QUICK_FAILURES",
    "ChildSpec",
    "Supervisor",
    "child_datadir",
    "child_port",
    "exit_reason",
    "resolve_processes",
    "sink_specs",
    "supervise",
    "usable_cores",
    "worker_specs",
]

log = logging.getLogger("bypass.supervisor")

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
#: A child that ran this long is healthy: its next failure restarts after BACKOFF_MIN_S.
STABLE_S = 60.0
#: A child that exits within this many seconds of its start failed "quickly".
QUICK_S = 10.0
MAX_QUICK_FAILURES = 5
STOP_TIMEOUT_S = 30.0
POLL_S = 0.2


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota
    (``cpu.max``, as a container limit sets it), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="ascii").split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def resolve_processes(requested: int | None, setting: int) -> int:
    """``--processes`` if given, else the setting; 0 means one per usable core."""
    n = setting if requested is None else requested
    return n if n > 0 else usable_cores()


def child_port(base: int, index: int, *, skip: int = 0) -> int:
    """Metrics port of child ``index``: ``base + index`` (0 stays 0: no endpoint). ``skip``
    ports after ``base`` are left out (``bypass sink redis`` uses the sink port + 1)."""
    if not base:
        return 0
    return base if index == 0 else base + skip + index


def child_datadir(state_dir: Path, index: int) -> Path:
    """Faust data directory of worker child ``index`` (a RocksDB table is locked by one
    process): ``<state_dir>/faust/process-<index>``."""
    return Path(state_dir) / "faust" / f"process-{index}"


def exit_reason(code: int) -> str:
    """A ``Popen.returncode`` in words: ``exited with code 1``, ``was killed by SIGKILL``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child: its index, the ``bypass`` arguments and the environment it adds."""

    index: int
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    quick_failures: int = 0
    backoff_s: float = BACKOFF_MIN_S
    restart_at: float | None = None
    done: bool = False


def _pdeathsig() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when the supervisor dies (Linux). Resolved in
    the parent: between fork and exec the child may not import."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):  # not Linux: the children outlive a killed supervisor
        return lambda: None
    sig = int(signal.SIGTERM)

    def set_pdeathsig() -> None:  # pragma: no cover - runs in the child
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return set_pdeathsig


class Supervisor:
    """Runs the children of ``specs`` until ``stop`` is set (see the module docstring)."""

    def __init__(
        self,
        name: str,
        specs: Sequence[ChildSpec],
        *,
        command: Sequence[str] = (sys.executable, "-m", "streams"),
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        stable_s: float = STABLE_S,
        quick_s: float = QUICK_S,
        max_quick_failures: int = MAX_QUICK_FAILURES,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.command = tuple(command)
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.stable_s = stable_s
        self.quick_s = quick_s
        self.max_quick_failures = max_quick_failures
        self.stop_timeout_s = stop_timeout_s
        self.children = [_Child(spec, backoff_s=backoff_min_s) for spec in specs]
        self.stop_signal = signal.SIGTERM
        self._preexec = _pdeathsig()

    # --- signals --------------------------------------------------------------
    def stop_on_signals(self) -> threading.Event:
        """An event set by SIGTERM or SIGINT; the signal received is the one forwarded."""
        stop = threading.Event()

        def handler(signum: int, frame: Any) -> None:
            self.stop_signal = signal.Signals(signum)
            stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        return stop

    # --- children -------------------------------------------------------------
    def _label(self, child: _Child) -> str:
        return f"{self.name} {child.spec.index}"

    def _start(self, child: _Child) -> None:
        env = {**os.environ, **child.spec.env}
        child.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and verb
            [*self.command, *child.spec.args],
            env=env,
            process_group=0,  # Ctrl-C in a terminal reaches the children through us only
            preexec_fn=self._preexec,  # prctl only, resolved before the fork
        )
        child.started = time.monotonic()
        child.restart_at = None
        log.info("%s started (pid %d)", self._label(child), child.proc.pid)

    def _on_exit(self, child: _Child, code: int, pid: int, now: float) -> bool:
        """Handle an exit before the stop: the child is done (code 0) or restarted later;
        False when the group must stop (a crash loop)."""
        ran_s = now - child.started
        child.proc = None
        if code == 0:
            child.done = True
            log.info("%s (pid %d) finished after %.1f s", self._label(child), pid, ran_s)
            return True
        if ran_s >= self.stable_s:
            child.backoff_s = self.backoff_min_s
        if ran_s < self.quick_s:
            child.quick_failures += 1
        else:
            child.quick_failures = 0
        if child.quick_failures >= self.max_quick_failures:
            log.error(
                "%s (pid %d) %s %d times in a row within %.0f s of its start: stopping all "
                "(see its log lines above for why)",
                self._label(child),
                pid,
                exit_reason(code),
                child.quick_failures,
                self.quick_s,
            )
            return False
        delay = child.backoff_s
        child.backoff_s = min(self.backoff_max_s, child.backoff_s * 2)
        child.restarts += 1
        child.restart_at = now + delay
        log.warning(
            "%s (pid %d) %s after %.1f s: restarting it in %.1f s (restart %d)",
            self._label(child),
            pid,
            exit_reason(code),
            ran_s,
            delay,
            child.restarts,
        )
        return True

    def pids(self) -> dict[int, int]:
        """Index -> pid of each running child."""
        return {
            c.spec.index: c.proc.pid for c in self.children if c.proc is not None and c.proc.poll() is None
        }

    def run(self, stop: threading.Event) -> int:
        """Start every child, restart the dead ones until ``stop`` is set (or every child has
        finished), then stop them all. 0 on a clean stop, 1 after a crash loop."""
        for child in self.children:
            self._start(child)
        code = 0
        while not stop.wait(POLL_S):
            now = time.monotonic()
            for child in self.children:
                if child.done:
                    continue
                if child.proc is None:
                    if child.restart_at is not None and now >= child.restart_at:
                        self._start(child)
                    continue
                rc = child.proc.poll()
                if rc is None:
                    continue
                if not self._on_exit(child, rc, child.proc.pid, now):
                    code = 1
                    break
            if code or all(c.done for c in self.children):
                break
        self._stop_all()
        return code

    def _stop_all(self) -> None:
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        if running:
            log.info(
                "stopping %d %s process(es) with %s",
                len(running),
                self.name,
                signal.Signals(self.stop_signal).name,
            )
        for child in running:
            assert child.proc is not None  # noqa: S101 - filtered above
            try:
                child.proc.send_signal(self.stop_signal)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.stop_timeout_s
        for child in running:
            assert child.proc is not None  # noqa: S101 - filtered above
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %d) still runs %.0f s after %s: killing it",
                    self._label(child),
                    child.proc.pid,
                    self.stop_timeout_s,
                    signal.Signals(self.stop_signal).name,
                )
                child.proc.kill()
                child.proc.wait()
        log.info("%s processes stopped", self.name)


def supervise(name: str, specs: Sequence[ChildSpec], settings: Settings) -> int:
    """Log the plan, run a :class:`Supervisor` over ``specs`` until SIGTERM / SIGINT; its
    exit code."""
    from streams.cli.params import setup_logging

    setup_logging(settings, tag=f"{name} supervisor")
    supervisor = Supervisor(name, specs)
    stop = supervisor.stop_on_signals()
    log.info(
        "%d %s processes in consumer group %s (pid %d supervises; SIGTERM or Ctrl-C stops them all)",
        len(specs),
        name,
        settings.app_id,
        os.getpid(),
    )
    return supervisor.run(stop)


def worker_specs(settings: Settings, n: int, *, verbose: bool = False) -> list[ChildSpec]:
    """``bypass worker`` children: port BYPASS_METRICS_PORT + i, data dir per child."""
    return [
        ChildSpec(
            i,
            ("worker", "--child", str(i), *(("--verbose",) if verbose else ())),
            {"BYPASS_METRICS_PORT": str(child_port(settings.metrics_port, i))},
        )
        for i in range(n)
    ]


def sink_specs(settings: Settings, n: int, args: Sequence[str] = ()) -> list[ChildSpec]:
    """``bypass sink clickhouse`` children: process 0 on BYPASS_SINK_METRICS_PORT, process
    i > 0 on that + 1 + i (the sink port + 1 is `bypass sink redis`'s)."""
    return [
        ChildSpec(
            i,
            ("sink", "clickhouse", "--child", str(i), *args),
            {"BYPASS_SINK_METRICS_PORT": str(child_port(settings.sink_metrics_port, i, skip=1))},
        )
        for i in range(n)
    ]
