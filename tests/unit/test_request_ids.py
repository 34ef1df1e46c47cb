"""Request ids made by Harmony are unique per request and per process, forked ones included."""

from __future__ import annotations

from harmony.api.plumbing import _request_id
from tests.unit.forking import made_in_forked_child


def test_ids_differ_per_request_and_a_given_id_is_kept() -> None:
    made = {_request_id({"headers": []}) for _ in range(1000)}
    assert len(made) == 1000
    given = {"headers": [(b"x-request-id", b"req-42")]}
    assert _request_id(given) == "req-42"
    unprintable = {"headers": [(b"x-request-id", b"bad\x01id")]}
    assert _request_id(unprintable) not in {"bad\x01id", ""}


def new_request_id() -> str:
    return _request_id({"headers": []})


def test_a_forked_process_makes_ids_of_its_own() -> None:
    parent = [new_request_id() for _ in range(2)]
    from_child = made_in_forked_child(new_request_id, 50)
    from_parent = [new_request_id() for _ in range(50)]
    assert len(set(from_child)) == 50
    assert not set(from_child) & set(parent + from_parent)
