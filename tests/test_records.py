"""Record ids, and the column split behind the SQLite fan-out inserts."""

from __future__ import annotations

import uuid

from pywebhooks.records import is_uuid, new_id, new_ids
from pywebhooks.sqlitedb import split_columns


def test_new_ids_are_distinct_random_uuid4_strings() -> None:
    """Each id is a canonical lowercase UUID of version 4 and the RFC variant."""
    ids = new_ids(2000) + [new_id() for _ in range(10)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert is_uuid(value) and str(parsed) == value
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
    assert new_ids(0) == []


def test_split_columns_binds_what_every_row_shares() -> None:
    """Fields equal (and of one type) in every row are shared; the rest vary,
    with each row's values in field order."""
    rows = [
        {"id": "a", "kind": "push", "count": 0, "log": []},
        {"id": "b", "kind": "push", "count": False, "log": []},
        {"id": "c", "kind": "push", "count": 0, "log": [1]},
    ]
    shared, varying, values = split_columns(rows, ("id", "kind", "count", "log"))
    assert shared == {"kind": "push"}
    assert varying == ["id", "count", "log"]
    assert values == [["a", 0, []], ["b", False, []], ["c", 0, [1]]]
    assert [type(row[1]) for row in values] == [int, bool, int]


def test_split_columns_of_one_row_or_none() -> None:
    """One row shares everything; no rows share nothing."""
    assert split_columns([{"id": "a", "n": 1}], ("id", "n")) == ({"id": "a", "n": 1}, [], [[]])
    assert split_columns([], ("id", "n")) == ({}, ["id", "n"], [])
