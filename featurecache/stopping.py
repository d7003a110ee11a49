"""Graceful stops: SIGTERM or SIGINT ends a long run at its next safe point.

cron's ``timeout``, systemd, Kubernetes and most schedulers stop a job with SIGTERM, a
person with Ctrl-C (SIGINT). Inside :func:`graceful_stop` the first of either only sets
a flag; the run calls :meth:`StopFlag.check` where stopping loses nothing (after an
extraction batch is durable in staging, after a fine-tuning step with the last epoch's
checkpoint on disk) and ends with :class:`~featurecache.errors.Stopped`, which the CLI
prints as one line and exits with 143 (SIGTERM) or 130 (SIGINT), as a shell reports a
process killed by the signal. A second signal stops at once, as if no handler were there.

Handlers can only be installed from the main thread; elsewhere (a Dask worker, a test
runner's thread) the context does nothing and signals keep their usual effect.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from featurecache.errors import Stopped

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Which signal asked the run to stop (``None`` while none has)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def check(self, progress: Callable[[], str]) -> None:
        """Raise :class:`Stopped` if a signal came; ``progress()`` says what was finished
        (``"120 of 400 images"``), for the message.

        Raises
        ------
        Stopped
            With the exit code 128 + the signal's number.
        """
        if self.signal_name is not None:
            raise Stopped(
                f"stopped by {self.signal_name} after {progress()}; run again to resume",
                signal_name=self.signal_name,
            )

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:  # the second signal: stop now, the usual way
            self._restore()
            os.kill(os.getpid(), signum)
            return
        self.signal_name = name
        log.warning(
            "%s received: stopping after the current step, keeping what is finished "
            "(send it again to stop at once)",
            name,
        )

    def _install(self) -> None:
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:  # ignored on purpose (a background job): keep it
                continue
            signal.signal(sig, self._handle)
            # None: a handler set from C, which Python cannot set again; the default instead
            self._previous[sig] = signal.SIG_DFL if previous is None else previous

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Catch SIGTERM and SIGINT for the duration of the block (main thread only)."""
    flag = StopFlag()
    if threading.current_thread() is threading.main_thread():
        flag._install()
    try:
        yield flag
    finally:
        flag._restore()
