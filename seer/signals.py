"""SIGTERM (what `kill`, systemd, Kubernetes and Ray send to stop a process) as an exception, so a
command-line run unwinds through every cleanup on the way out, as it does for Ctrl-C.

Python runs a signal handler between two bytecodes of the main thread, wherever that is: inside an
object's finalizer (`__del__`, a weakref callback) the exception it raises is printed and dropped.
So the signal is also remembered, and `check()` at the points of no return (before an engine
directory takes --out's place, at each export phase) raises it again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so every `except Exception` lets it through and every
    cleanup written for Ctrl-C runs for it too."""


_received = False


def _raise_terminated(signum, frame):
    global _received
    _received = True
    raise Terminated()  # on every SIGTERM, as Ctrl-C raises on every press: one may land in a finalizer


def check() -> None:
    """Raise Terminated if a SIGTERM arrived during this run, also one whose exception was dropped."""
    if _received:
        raise Terminated()


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within: SIGTERM raises Terminated in the main thread. Elsewhere (a CLI called from a worker
    thread) nothing changes: only the main thread may set signal handlers."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = False
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _received = False
