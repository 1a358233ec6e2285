"""The supervisor of ``--processes N`` (streams/live/supervisor.py), with tiny Python children."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from streams.live import supervisor
from streams.live.supervisor import ChildSpec, Supervisor
from streams.settings import Settings

# a child: writes its pid to <dir>/<index>.<pid> then runs the given mode
CHILD = """
import os, signal, sys, time
d, index, mode = sys.argv[1], sys.argv[2], sys.argv[3]
open(os.path.join(d, f"{index}.{os.getpid()}"), "w").close()
def bye(signum, frame):
    open(os.path.join(d, f"stopped-{index}-{signal.Signals(signum).name}"), "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
signal.signal(signal.SIGINT, bye)
if mode == "fail":
    sys.exit(3)
if mode == "done":
    sys.exit(0)
while True:
    time.sleep(0.05)
"""


def _supervisor(tmp_path: Path, modes: list[str], **kwargs: float) -> Supervisor:
    specs = [ChildSpec(i, (str(tmp_path), str(i), mode)) for i, mode in enumerate(modes)]
    return Supervisor("test", specs, command=(sys.executable, "-c", CHILD), **kwargs)  # type: ignore[arg-type]


def _pids(tmp_path: Path, index: int) -> list[int]:
    return sorted(int(p.suffix[1:]) for p in tmp_path.glob(f"{index}.*"))


def _started(tmp_path: Path, sup: Supervisor, n: int) -> bool:
    """n children run and each has set its signal handlers (written its pid file)."""
    pids = sup.pids()
    return len(pids) == n and all(pid in _pids(tmp_path, i) for i, pid in pids.items())


def _wait(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_child_is_restarted_and_a_stop_reaches_every_child(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = _supervisor(tmp_path, ["run", "run"], backoff_min_s=0.2)
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(sup.run(stop)))
    with caplog.at_level("INFO", logger="bypass.supervisor"):
        thread.start()
        _wait(lambda: _started(tmp_path, sup, 2))
        first = sup.pids()[1]
        os.kill(first, signal.SIGKILL)
        _wait(lambda: sup.pids().get(1) not in (None, first) and _started(tmp_path, sup, 2))
        stop.set()
        thread.join(timeout=15)
    assert result == [0]
    assert (tmp_path / "stopped-0-SIGTERM").exists() and (tmp_path / "stopped-1-SIGTERM").exists()
    assert len(_pids(tmp_path, 1)) == 2 and len(_pids(tmp_path, 0)) == 1
    assert f"test 1 (pid {first}) was killed by SIGKILL" in caplog.text
    assert "restarting it in 0.2 s (restart 1)" in caplog.text


def test_the_signal_received_is_the_one_forwarded(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, ["run"])
    sup.stop_signal = signal.SIGINT
    stop = threading.Event()
    thread = threading.Thread(target=sup.run, args=(stop,))
    thread.start()
    _wait(lambda: _started(tmp_path, sup, 1))
    stop.set()
    thread.join(timeout=15)
    assert (tmp_path / "stopped-0-SIGINT").exists()


def test_children_that_finish_with_0_are_not_restarted_and_the_supervisor_ends(tmp_path: Path) -> None:
    assert _supervisor(tmp_path, ["done", "done"]).run(threading.Event()) == 0
    assert len(_pids(tmp_path, 0)) == 1 and len(_pids(tmp_path, 1)) == 1


def test_a_crash_loop_stops_the_group_with_exit_code_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = _supervisor(tmp_path, ["fail", "run"], backoff_min_s=0.2, max_quick_failures=3)
    with caplog.at_level("INFO", logger="bypass.supervisor"):
        assert sup.run(threading.Event()) == 1
    assert len(_pids(tmp_path, 0)) == 3
    assert (tmp_path / "stopped-1-SIGTERM").exists()  # the healthy one was stopped cleanly
    assert "exited with code 3 3 times in a row" in caplog.text


def test_back_off_doubles_up_to_its_maximum(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, ["fail"], backoff_min_s=1.0, backoff_max_s=3.0, max_quick_failures=99)
    child = sup.children[0]
    delays = []
    for _ in range(4):
        child.started = 0.0
        assert sup._on_exit(child, 1, 123, now=1.0)
        assert child.restart_at is not None
        delays.append(child.restart_at - 1.0)
    assert delays == [1.0, 2.0, 3.0, 3.0]
    child.started = 0.0
    assert sup._on_exit(child, -9, 123, now=sup.stable_s + 1)  # ran a while: back to the minimum
    assert child.restart_at == pytest.approx(sup.stable_s + 2)


def test_exit_reasons_ports_datadirs_and_the_default_count() -> None:
    assert supervisor.exit_reason(-9) == "was killed by SIGKILL"
    assert supervisor.exit_reason(2) == "exited with code 2"
    assert [supervisor.child_port(9108, i) for i in range(3)] == [9108, 9109, 9110]
    assert [supervisor.child_port(9110, i, skip=1) for i in range(3)] == [9110, 9112, 9113]
    assert supervisor.child_port(0, 3) == 0
    assert supervisor.child_datadir(Path("/s"), 2) == Path("/s/faust/process-2")
    assert supervisor.resolve_processes(None, 3) == 3
    assert supervisor.resolve_processes(2, 5) == 2
    assert supervisor.resolve_processes(0, 5) == supervisor.usable_cores() >= 1
    assert supervisor.resolve_processes(None, 0) == supervisor.usable_cores()


def test_worker_and_sink_children_get_their_own_ports() -> None:
    s = Settings(metrics_port=9200, sink_metrics_port=9300)
    workers = supervisor.worker_specs(s, 2, verbose=True)
    assert [w.env["BYPASS_METRICS_PORT"] for w in workers] == ["9200", "9201"]
    assert workers[1].args == ("worker", "--child", "1", "--verbose")
    sinks = supervisor.sink_specs(s, 2, ["--idle-exit", "3"])
    assert [w.env["BYPASS_SINK_METRICS_PORT"] for w in sinks] == ["9300", "9302"]
    assert sinks[0].args == ("sink", "clickhouse", "--child", "0", "--idle-exit", "3")
