"""Plain value types shared by the API, the stores and the delivery machinery.

Records travel as ``dict``s that are already shaped like the JSON the API
returns (``id``, ``epoch`` and the resource's own fields), so a store hands
the API exactly what a client sees and nothing has to be re-mapped twice.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

Record = dict[str, Any]

#: The six counters of a write result, in the order the original returned them.
WRITE_RESULT_KEYS = ("deleted", "errors", "inserted", "replaced", "skipped", "unchanged")


@dataclasses.dataclass(frozen=True)
class WriteResult:
    """The outcome of a write, in the original (RethinkDB-shaped) six counts."""

    deleted: int = 0
    errors: int = 0
    inserted: int = 0
    replaced: int = 0
    skipped: int = 0
    unchanged: int = 0

    def to_json(self) -> dict[str, int]:
        """The body a PATCH or DELETE answers with."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of a list: the rows and whether more rows follow it."""

    rows: list[Record]
    more: bool


def new_id() -> str:
    """A fresh record id: a random UUID4 string, lowercase and hyphenated."""
    return str(uuid.uuid4())


def is_uuid(value: str) -> bool:
    """True when ``value`` is a canonical (hyphenated, any case) UUID string."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return str(parsed) == value.lower()
