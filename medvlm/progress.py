"""Progress as `logging` lines on stderr.

Bars erase themselves and vanish when stderr is a file; log lines stay in both. Long loops
(encoding, zero-shot VQA, bootstrap) report `what done/total` at most every few seconds, so a
log file shows that work is moving without drowning in lines.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("medvlm")
T = TypeVar("T")
EVERY_S = 10.0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is emitted (redirections and test captures swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Route medvlm's progress lines to stderr as `medvlm: ...`; idempotent.

    They do not propagate: a library calling `logging.warning()` (open_clip does) installs a root
    handler, and every line would then appear twice, once as `INFO:medvlm:...`.
    """
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("medvlm: %(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def tracked(items: Iterable[T], what: str, total: int, size: Callable[[T], int] | None = None,
            every_s: float = EVERY_S) -> Iterator[T]:
    """Yield `items`, logging `what: done/total` every `every_s` seconds, and at the end of a long loop.

    `size` counts the units in an item (images in a batch); by default each item is one unit.
    """
    done, last, start = 0, time.monotonic(), time.monotonic()
    for item in items:
        yield item
        done += size(item) if size is not None else 1
        now = time.monotonic()
        if now - last >= every_s and done < total:
            log.info("%s: %d/%d (%.0f s)", what, done, total, now - start)
            last = now
    if total and time.monotonic() - start >= every_s:
        log.info("%s: %d/%d done in %.0f s", what, done, total, time.monotonic() - start)
