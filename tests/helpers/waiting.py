"""Waiting, in trio, for a condition another process or peer makes true (no event to wait on)."""
from __future__ import annotations

from typing import Callable

import trio


async def until(pred: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    """True once ``pred()`` is true, polled every ``step`` s; False if ``timeout`` passes first."""
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(step)
        return True
    return False
