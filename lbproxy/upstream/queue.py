"""
The requests of one pool waiting for a server that is at its
C{max_connections}: first come, first served, and bounded.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque

#: Requests that may wait for a server below its max_connections, per pool.
MAX_WAITING = 10_000


class WaitQueue:
    """
    A bounded FIFO of callables, each called once when a slot may be free.
    """

    def __init__(self, limit: int = MAX_WAITING) -> None:
        self.limit = limit
        self._waiting: Deque[Callable[[], None]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def has_room(self) -> bool:
        return len(self._waiting) < self.limit

    def join(self, ready: Callable[[], None], first: bool = False) -> Callable[[], None]:
        """
        Queue C{ready} (at the head when C{first}: a waiter woken that found
        no slot after all keeps its turn); the caller checks L{has_room}
        first.  Returns a function that leaves the queue (harmless once
        C{ready} was called).
        """
        if first:
            self._waiting.appendleft(ready)
        else:
            self._waiting.append(ready)

        def leave() -> None:
            try:
                self._waiting.remove(ready)
            except ValueError:
                pass

        return leave

    def wake(self, open_: Callable[[], bool]) -> None:
        """
        Call waiters in order while C{open_()} says a server may take one:
        everyone woken may try, and the first to dispatch may close it again.
        Each wake calls at most as many waiters as were waiting (one that
        goes back to the head is not called again and again).
        """
        waiting = self._waiting
        turns = len(waiting)
        while turns and waiting and open_():
            turns -= 1
            waiting.popleft()()
