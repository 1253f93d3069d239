"""Engine calls run in thread workers; this is how they report back without blocking.

An engine loop calls `advance` thousands of times from worker threads. Each call only bumps
a counter under a lock; the app reads a snapshot a few times a second and draws it, so a
fast hash never waits on the screen.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class ProgressSnapshot:
    description: str
    total: int
    done: int
    unit: str


class ThreadProgress:
    """A surgeon.progress.ProgressSink that worker threads write and the UI polls."""

    def __init__(self, description: str = ""):
        self._lock = threading.Lock()
        self._state = ProgressSnapshot(description, 0, 0, "")

    def start(self, description: str, total: int, unit: str = "bytes") -> None:
        with self._lock:
            self._state = ProgressSnapshot(description, int(total), 0, unit)

    def advance(self, amount: int) -> None:
        with self._lock:
            self._state.done += int(amount)

    def stop(self) -> None:
        with self._lock:
            self._state.done = self._state.total

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            return ProgressSnapshot(**vars(self._state))


@dataclass
class Job:
    """One engine call at a time: hashing, canary, prune or write."""

    name: str
    done: object  # called on the UI thread with the result
    progress: ThreadProgress = field(default_factory=ThreadProgress)
    cancel: threading.Event = field(default_factory=threading.Event)
    worker: object | None = None
    quit_question: object | None = None  # the "cancel it and quit?" dialog, while it is up
