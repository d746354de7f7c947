"""A batch of attempt records written set-based gives what one-by-one writes give."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from pywebhooks.store.attempt_log import AttemptWrite, counted_forward, layers, logging_attempts
from pywebhooks.store.sqlite import SCHEMA


def attempt(number: int, ok: bool) -> dict[str, Any]:
    """An attempt record as the scheduler logs it."""
    return {"attempt": number, "at": 1.5, "ok": ok, "status_code": 200 if ok else 503,
            "error": None, "duration": 0.125}


def write(delivery_id: str, account_id: str, number: int, ok: bool, final: bool = False) -> AttemptWrite:
    """One attempt to log (of firing ``f``)."""
    return AttemptWrite("f", delivery_id, account_id, attempt(number, ok), final)


def test_layers_name_each_delivery_once_and_keep_its_order() -> None:
    """A delivery's attempts land in successive layers, in batch order."""
    batch = [write("d1", "a", 1, False), write("d2", "a", 1, False), write("d1", "a", 2, False),
             write("d1", "a", 3, True), write("d3", "a", 1, True)]
    assert layers(batch) == [[batch[0], batch[1], batch[4]], [batch[2]], [batch[3]]]
    assert layers([]) == []


def test_counts_go_forward_in_batch_order() -> None:
    """Failures add one, a success resets, an unknown account counts nothing."""
    counts = {"a": 3, "b": 0}
    batch = [write("d1", "a", 1, False), write("d2", "b", 1, False), write("d3", "a", 1, False),
             write("d4", "a", 1, True), write("d5", "gone", 1, False), write("d6", "a", 1, False)]
    assert counted_forward(counts, batch) == [4, 1, 5, 0, None, 1]
    assert counts == {"a": 1, "b": 1}


def test_a_batch_in_sqlite_logs_every_attempt_and_the_last_counts() -> None:
    """Run against real tables: logs in order, states, and the counts left."""
    connection = sqlite3.connect(":memory:")
    for statement in SCHEMA:
        connection.execute(statement)
    for account_id, failed in (("a", 2), ("b", 0)):
        connection.execute(
            "INSERT INTO accounts (id, username, is_admin, failed_count) VALUES (?, ?, 0, ?)",
            (account_id, account_id, failed))
    for delivery_id in ("d1", "d2", "d3"):
        connection.execute(
            "INSERT INTO deliveries (id, firing_id, state, attempts) VALUES (?, 'f', 'pending', '[]')",
            (delivery_id,))
    batch = [write("d1", "a", 1, False), write("d2", "b", 1, True), write("d1", "a", 2, False, final=True),
             write("d3", "gone", 1, False), write("d2", "b", 2, False)]
    assert logging_attempts(batch)(connection) == [3, 0, 4, None, 1]
    logged = {key: (state, json.loads(attempts)) for key, state, attempts in
              connection.execute("SELECT id, state, attempts FROM deliveries")}
    assert logged["d1"] == ("failed", [attempt(1, False), attempt(2, False)])
    # A later failure of a delivered delivery leaves it delivered (as one-by-one writes would).
    assert logged["d2"][0] == "delivered"
    assert logged["d3"][0] == "pending"
    assert dict(connection.execute("SELECT id, failed_count FROM accounts")) == {"a": 4, "b": 1}

