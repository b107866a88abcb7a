"""Worker processes that never outlive the process that started them.

Pass :func:`die_with_parent` as the ``initializer`` of a ``multiprocessing.Pool`` or
``ProcessPoolExecutor``: on Linux the kernel kills the worker when its parent dies (``kill -9``
included, ``PR_SET_PDEATHSIG``); elsewhere a watchdog thread ends it within a second of the parent
being gone. A worker blocked on a pipe to a dead parent would otherwise hold its memory for minutes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def _watch(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def die_with_parent() -> None:
    """Make this (worker) process end when its parent ends."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0:
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except OSError:
            pass
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
