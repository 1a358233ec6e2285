"""Replay's progress bar on stderr: offsets done / total (ETA by offsets), events, events/s."""

from __future__ import annotations

from typing import Any

__all__ = ["Progress"]


class Progress:
    """A rich progress bar on stderr: offsets done / total (ETA by offsets), events, events/s."""

    def __init__(self, console: Any, *, total: int, description: str) -> None:
        self._console = console
        self._progress: Any = None
        self._task: Any = None
        self._total = max(total, 1)
        self._description = description

    def __enter__(self) -> Progress:
        if self._console is not None:
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[events]:,} events"),
                TextColumn("{task.fields[rate]:,.0f} ev/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self._description, total=self._total, events=0, rate=0.0)
        return self

    def update(self, done: int, events: int, elapsed_s: float) -> None:
        if self._progress is not None:
            total = max(self._total, done)
            rate = events / elapsed_s if elapsed_s > 0 else 0.0
            self._progress.update(self._task, completed=done, total=total, events=events, rate=rate)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
