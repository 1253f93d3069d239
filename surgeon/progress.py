"""How engine loops report progress: a sink the CLI (rich) or the TUI implements."""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    def start(self, description: str, total: int, unit: str = "bytes") -> None: ...
    def advance(self, amount: int) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def start(self, description: str, total: int, unit: str = "bytes") -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def stop(self) -> None:
        pass
