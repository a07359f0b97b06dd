"""Unique ids made cheaply: request ids, and the gateway's own client message ids.

A random 64-bit prefix per process and a counter, 32 hex characters like ``uuid4().hex``:
unique within a process by the counter, and between processes unless two of them draw the
same prefix (one chance in 2^64 per pair). uuid4 reads the kernel's random source for every
id, which costs a system call per request; this costs a string format.
"""

from __future__ import annotations

import itertools
import os


class UniqueIds:
    def __init__(self) -> None:
        self._reseed()
        # A forked child must not repeat its parent's ids.
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


unique_id = UniqueIds().next
