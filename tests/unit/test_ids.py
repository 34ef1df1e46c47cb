"""Random ids from a buffered source are version 4 UUIDs, never repeated, forks included."""

from __future__ import annotations

import uuid

from harmony.routing.ids import random_hex, random_uuid
from tests.unit.forking import made_in_forked_child


def test_ids_are_version_4_uuids_and_never_repeat_across_batches() -> None:
    made = [random_uuid() for _ in range(3000)]  # several 4 KiB batches of random bytes
    assert len(set(made)) == 3000
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in made)
    hexes = [random_hex() for _ in range(300)]
    assert all(len(h) == 32 and uuid.UUID(h).version == 4 for h in hexes)
    assert not set(hexes) & {u.hex for u in made}


def test_a_forked_process_does_not_repeat_its_parents_ids() -> None:
    random_hex()  # the parent holds a batch read before the fork
    from_child = made_in_forked_child(random_hex, 50)
    from_parent = [random_hex() for _ in range(50)]
    assert len(set(from_child)) == 50
    assert not set(from_child) & set(from_parent)
