"""Ctrl-C, SIGTERM (a scheduler's preemption) and SIGHUP (a closed terminal) as requests to stop,
honoured where the run's state is whole.

The first signal only records the request; the training loop calls `check()` at its step
boundaries (after an env step, an update, a training step), which raises `StopRequested` there, so
a checkpoint never holds a half-applied step. Inside `immediately()` (an evaluation, whose work
changes nothing a checkpoint holds until it has finished) the first signal stops at once. A
second signal raises KeyboardInterrupt wherever the process is: the user wants out now, and a
checkpoint being written then is abandoned whole (its manifest is never written, the previous one
stays the newest; twm_fast.checkpoint).
"""
from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


class StopRequested(Exception):
    """Raised at a step boundary after a stop signal: the run checkpoints and exits (to be resumed)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """The stop requests of one process; a fresh instance that was never installed stops nothing.

    Installed, it starts by stopping at once (before the run starts there is nothing to save);
    `defer()` switches to stopping at step boundaries."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._immediate = 0
        self._previous: dict[int, object] = {}

    def install(self) -> StopSignals:
        self._immediate = 1
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def defer(self) -> None:
        """From now on a first signal waits for the next step boundary (`check`)."""
        self._immediate = 0

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # a second signal: out now
        self.requested = signal.Signals(signum).name
        if self._immediate:
            raise StopRequested(self.requested)

    def check(self) -> None:
        """A step boundary: raise StopRequested if a stop was requested."""
        if self.requested is not None:
            raise StopRequested(self.requested)

    @contextlib.contextmanager
    def immediately(self) -> Iterator[None]:
        """A region with nothing half-done to protect: a stop signal raises StopRequested at once."""
        self.check()
        self._immediate += 1
        try:
            yield
        finally:
            self._immediate -= 1
