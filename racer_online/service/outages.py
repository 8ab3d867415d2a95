"""One log line when an outage starts and one when it ends, instead of one per attempt.

A timer that reads Redis every half second wrote 111 identical warnings in 55 s of outage;
what an operator needs is when it started, when it ended and how many attempts failed.
"""

from __future__ import annotations

import logging
import time


class OutageLog:
    """The state of one retried call (``what``: what waits meanwhile), logged on change."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger, self.what = logger, what
        self.failures = 0  # since the last success
        self._since = 0.0

    @property
    def down(self) -> bool:
        return self.failures > 0

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == 1:
            self._since = time.monotonic()
            self.logger.warning("%s: %s (logged again once it ends)", self.what, exc)

    def succeeded(self) -> None:
        if self.failures:
            self.logger.warning("%s: over after %d failed attempts in %.1f s", self.what,
                                self.failures, time.monotonic() - self._since)  # fmt: skip
            self.failures = 0
