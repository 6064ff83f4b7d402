"""SIGINT/SIGTERM handlers saved and restored: a library call may change them for its own
duration (to stop at a step boundary) but must leave the process as it found it."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals_handled(handler: Optional[Callable[[int, Any], None]] = None) -> Iterator[bool]:
    """Within the block SIGINT/SIGTERM go to `handler` (None: left as they are); afterwards the
    previous handlers are back, whatever happened. Yields False (and changes nothing) outside the
    main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        if handler is not None:
            for sig in STOP_SIGNALS:
                signal.signal(sig, handler)
        yield True
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
