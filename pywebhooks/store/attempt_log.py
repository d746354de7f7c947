"""Logging delivery attempts in SQLite: a batch of attempts in a few statements.

Attempts that end in the same moment are written together (group commit).
Each SQLite statement step releases the GIL and then has to take it back
from the reactor, which holds it for up to the interpreter's switch
interval (5 ms) at a time: a batch written row by row (three statements
per attempt) spent most of its time waiting for the GIL, and the slots of
the attempts it held stayed busy meanwhile (``bench/RESULTS.md``, ninth
pass).  So a batch is handed to SQLite as one JSON array and written by
set-based statements, whatever its size:

- the attempts are appended to their deliveries' logs (each delivery found
  by its firing and id) by one ``UPDATE ... FROM json_each(?)`` (one more
  for each further attempt of one delivery in the batch: a delivery named
  twice gets its two attempts in order);
- the subscribers' ``failed_count`` values are read in one statement,
  counted forward in Python in the batch's order (each attempt gets the
  count it left, as if the attempts had been written one by one), and
  written back in one statement.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any, Callable, Iterable, Mapping, Sequence

_LOG_ATTEMPTS = (
    "UPDATE deliveries"
    " SET state = coalesce(json_extract(batch.value, '$[2]'), deliveries.state),"
    " attempts = json_insert(deliveries.attempts, '$[#]', json_extract(batch.value, '$[3]'))"
    " FROM json_each(?) AS batch WHERE deliveries.firing_id = json_extract(batch.value, '$[0]')"
    " AND deliveries.id = json_extract(batch.value, '$[1]')"
)

_READ_COUNTS = (
    "SELECT json_group_array(json_array(id, failed_count)) FROM accounts"
    " WHERE id IN (SELECT value FROM json_each(?))"
)

_WRITE_COUNTS = (
    "UPDATE accounts SET failed_count = json_extract(batch.value, '$[1]')"
    " FROM json_each(?) AS batch WHERE accounts.id = json_extract(batch.value, '$[0]')"
)


@dataclasses.dataclass(frozen=True)
class AttemptWrite:
    """One attempt to log: the arguments of ``IStore.record_attempt``."""

    firing_id: str
    delivery_id: str
    account_id: str
    attempt: Mapping[str, Any]
    final: bool

    @property
    def state(self) -> str | None:
        """The delivery's new state, or None to leave it pending."""
        if self.attempt["ok"]:
            return "delivered"
        return "failed" if self.final else None


def layers(writes: Sequence[AttemptWrite]) -> list[list[AttemptWrite]]:
    """``writes`` in layers that name each delivery at most once: a
    delivery's first attempt of the batch in the first layer, its second in
    the second, and so on, so that applying the layers in order appends each
    delivery's attempts in the batch's order."""
    layered: list[list[AttemptWrite]] = []
    seen: dict[str, int] = {}
    for write in writes:
        depth = seen.get(write.delivery_id, 0)
        seen[write.delivery_id] = depth + 1
        if depth == len(layered):
            layered.append([])
        layered[depth].append(write)
    return layered


def counted_forward(counts: dict[str, int], writes: Iterable[AttemptWrite]) -> list[int | None]:
    """Each write's new ``failed_count`` (None for an unknown account), updating
    ``counts`` (account id -> count) in place: a success resets the count, a
    failure adds one."""
    results: list[int | None] = []
    for write in writes:
        if write.account_id not in counts:
            results.append(None)
            continue
        counts[write.account_id] = 0 if write.attempt["ok"] else counts[write.account_id] + 1
        results.append(counts[write.account_id])
    return results


def logging_attempts(writes: Sequence[AttemptWrite]) -> Callable[[sqlite3.Connection], list[int | None]]:
    """The statements that log ``writes``, for a transaction of the caller's;
    it answers each write's new ``failed_count`` (None when its account is gone)."""
    logs = [json.dumps([[write.firing_id, write.delivery_id, write.state, write.attempt] for write in layer])
            for layer in layers(writes)]
    account_ids = json.dumps(sorted({write.account_id for write in writes}))

    def log(connection: sqlite3.Connection) -> list[int | None]:
        for batch in logs:
            connection.execute(_LOG_ATTEMPTS, (batch,))
        (found,) = connection.execute(_READ_COUNTS, (account_ids,)).fetchone()
        counts = dict(json.loads(found))
        results = counted_forward(counts, writes)
        if counts:
            connection.execute(_WRITE_COUNTS, (json.dumps(list(counts.items())),))
        return results

    return log
