"""Cheap unique ids: the format of uuid4().hex, no repeats, none shared with a forked child."""

from __future__ import annotations

import os
import re

from servicekit.unique import UniqueIds, unique_id


def test_ids_look_like_uuid_hex_and_do_not_repeat() -> None:
    ids = [unique_id() for _ in range(100_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids[:1000])
    assert len(set(ids)) == len(ids)


def test_processes_draw_their_own_prefix() -> None:
    first, second = UniqueIds(), UniqueIds()
    assert first.next()[:16] != second.next()[:16]


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    ids = UniqueIds()
    ids.next()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, ids.next().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    parent_id = ids.next()
    assert len(child_id) == 32
    assert child_id[:16] != parent_id[:16]
