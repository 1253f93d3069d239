"""Thread-pool maps that stop early: on the caller's cancel event, on Ctrl-C, or on an error."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

from surgeon.errors import Cancelled

T = TypeVar("T")
R = TypeVar("R")
StopCheck = Callable[[], bool]


def map_cancellable(
    func: Callable[[T, StopCheck], R],
    items: Iterable[T],
    workers: int,
    cancel: threading.Event | None = None,
) -> list[R]:
    """func(item, should_stop) for each item on `workers` threads, results in item order.

    Workers poll should_stop() between chunks; it turns true when `cancel` is set or when
    the caller stops waiting (an exception in any worker, or KeyboardInterrupt), so leaving
    never waits for the remaining work to finish.
    """
    stop = threading.Event()

    def should_stop() -> bool:
        return stop.is_set() or (cancel is not None and cancel.is_set())

    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = []
        try:  # a signal can land while the items are submitted: the first may be running already
            for item in items:
                futures.append(pool.submit(func, item, should_stop))
            for future in as_completed(futures):
                future.result()  # raises the first failure as soon as it happens
            return [future.result() for future in futures]
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise


def check_stop(should_stop: StopCheck | None) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled()
