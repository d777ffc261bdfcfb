"""Progress bars on long work: shown on a terminal, replaced by periodic log lines elsewhere."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger("moe_experts")
ENV_NO_PROGRESS = "MOE_EXPERTS_NO_PROGRESS"


def bars_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get(ENV_NO_PROGRESS)


class Progress:
    """A tqdm bar on a terminal; otherwise an INFO line at most every ``every_s`` seconds."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", every_s: float = 15.0) -> None:
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.n = 0
        self._bar = None
        self._last = time.monotonic()
        if bars_enabled():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            of = f"/{self.total}" if self.total else ""
            logger.info("%s: %d%s %s", self.desc, self.n, of, self.unit)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    with Progress(desc, total=total, unit=unit) as bar:
        for item in items:
            yield item
            bar.update()
