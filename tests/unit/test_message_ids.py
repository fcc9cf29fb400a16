"""Generated message ids: unique, and independent of the application's use of ``random``."""

import os
import random

from unimq.message import new_message_id


def test_ids_are_32_hex_digits_and_unique() -> None:
    ids = {new_message_id() for _ in range(50_000)}
    assert len(ids) == 50_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_seeding_the_global_random_does_not_repeat_ids() -> None:
    random.seed(7)
    first = new_message_id()
    random.seed(7)
    assert new_message_id() != first


def test_a_forked_child_mints_different_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, new_message_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == 32 and child != new_message_id()
