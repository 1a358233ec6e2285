"""The worker's stop report: where a slow stop waits (threads and asyncio tasks)."""

from __future__ import annotations

import asyncio
import threading

from streams.live.worker import _stuck_report


def test_the_stuck_report_names_each_thread_and_each_pending_task() -> None:
    release = threading.Event()
    parked = threading.Thread(target=release.wait, name="parked-thread", daemon=True)
    parked.start()

    async def waits_forever(never: asyncio.Event) -> None:
        await never.wait()

    async def main() -> str:
        never = asyncio.Event()
        task = asyncio.create_task(waits_forever(never), name="the-stuck-task")
        await asyncio.sleep(0)
        report = _stuck_report(asyncio.get_running_loop())
        task.cancel()
        return report

    try:
        report = asyncio.run(main())
    finally:
        release.set()
        parked.join()
    assert "thread parked-thread:" in report
    assert "task the-stuck-task" in report
    assert "waits_forever" in report  # the task's frame: where it waits
