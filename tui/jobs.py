"""Engine calls run in thread workers, one at a time; this is how they start, report back
without blocking, and stop.

An engine loop calls `advance` thousands of times from worker threads. Each call only bumps
a counter under a lock; the job bar reads a snapshot a few times a second and draws it, so a
fast hash never waits on the screen.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import Label, ProgressBar
from textual.worker import Worker, WorkerState

from .session import LOADING_TORCH

Result = TypeVar("Result")
Result_co = TypeVar("Result_co", covariant=True)
Result_contra = TypeVar("Result_contra", contravariant=True)


class Work(Protocol[Result_co]):
    """A job's engine call: runs in a thread worker, reports to `job.progress`, looks at
    `job.cancel` between steps, and returns its result."""

    def __call__(self, job: Job, /) -> Result_co: ...


class Done(Protocol[Result_contra]):
    """Hears a job's result on the UI thread, when the job has succeeded."""

    def __call__(self, result: Result_contra, /) -> None: ...


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
    done: Done[Any]  # called on the UI thread with the result
    progress: ThreadProgress = field(default_factory=ThreadProgress)
    cancel: threading.Event = field(default_factory=threading.Event)
    worker: Worker[Any] | None = None  # the thread worker, from the moment the job starts
    quit_question: ModalScreen[bool] | None = None  # the "cancel it and quit?" dialog, while it is up
    refused: str | None = None  # how to start a job refused while this one stopped ("press c")

    @property
    def stopping(self) -> bool:
        """Cancelled, and not yet ended: the engine stops at its next step, which may take
        seconds (an import of torch, a model's load, a prompt) that nothing can cut short."""
        return self.cancel.is_set()


class JobRunner:
    """The app's jobs: one engine call at a time (hashing, canary, auto plan, eval, budget
    plan, write or prune), each in a thread worker with its own progress and cancel event.
    A second job while one runs is refused with a notice: the engine calls share the
    session's models and files. The runner keeps the books; the app shows the results."""

    def __init__(self, app: App):
        self._app = app  # it runs the workers and hears how they end
        self.job: Job | None = None

    def start(self, name: str, work: Work[Result], done: Done[Result], again: str = "start it") -> bool:
        """Runs `work(job)` in a thread; `done(result)` is called on the UI thread if it succeeds.
        A job refused says why, and how to start it again (`again`, e.g. "press c")."""
        running = self.job
        if running is not None and running.stopping:  # x was pressed: say so, not "x cancels it"
            running.refused = again
            message = f"{name} not started: the {running.name} is still stopping; {again} again when it has"
            self._app.notify(message, severity="warning", timeout=6)
            return False
        if running is not None:
            self._app.notify(f"{name} not started: the {running.name} is running (x cancels it)", severity="warning")
            return False
        job = Job(name, done=done)
        job.progress.start(name, 0)
        self.job = job
        job.worker = self._app.run_worker(lambda: work(job), thread=True, exit_on_error=False, name=name, group="job")
        return True

    def ended(self, event: Worker.StateChanged) -> Job | None:
        """The job whose worker `event` says has ended (it is no longer running), else None."""
        job = self.job
        if job is None or event.worker is not job.worker or event.state in (WorkerState.PENDING, WorkerState.RUNNING):
            return None
        self.job = None
        return job

    def cancel(self) -> Job | None:
        """Asks the running job to stop (the engine checks between steps); the job, or None."""
        if self.job is not None:
            self.job.cancel.set()
        return self.job


class JobBar(Horizontal):
    """One line over the tabs while a job runs: its name, what it is doing, its progress."""

    DEFAULT_CSS = """
    JobBar { height: 1; display: none; background: $boost; }
    JobBar.running { display: block; }
    #job-label { width: auto; max-width: 40; padding: 0 1; }
    #job-progress { width: 1fr; }
    #job-hint { width: auto; padding: 0 1; color: $text-muted; }
    JobBar.stopping #job-label { color: $warning; }
    """

    def __init__(self, jobs: JobRunner, **kwargs):
        super().__init__(**kwargs)
        self.jobs = jobs

    def compose(self) -> ComposeResult:
        yield Label("", id="job-label")
        yield ProgressBar(id="job-progress", show_eta=False)
        yield Label("x: cancel", id="job-hint")

    def on_mount(self) -> None:
        self.set_interval(0.2, self.draw)

    def draw(self) -> None:
        job = self.jobs.job
        self.set_class(job is not None, "running")
        if job is None:
            return
        state = job.progress.snapshot()
        self.set_class(job.stopping, "stopping")
        phase = "cancelling…" if job.stopping else state.description
        self.query_one("#job-label", Label).update(job_label(job.name, phase))
        self.query_one("#job-hint", Label).update(cancel_hint(job.stopping, state.description))
        self.query_one("#job-progress", ProgressBar).update(total=state.total or None, progress=state.done)


def cancel_hint(stopping: bool, phase: str) -> str:
    """What the bar says of cancelling: the key, or when the job will have stopped."""
    if not stopping:
        return "x: cancel"
    return "stops once torch has loaded" if phase == LOADING_TORCH else "stops at its next step"


def job_label(name: str, phase: str) -> str:
    """ "canary: loading models", or the name alone while the phase only repeats it (a job
    starts in a phase named after itself, and the diff's first phase is "hashing" too)."""
    return name if phase in ("", name) else f"{name}: {phase}"
