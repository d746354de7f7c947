"""Plain value types shared by the API, the stores and the delivery machinery.

Records travel as ``dict``s that are already shaped like the JSON the API
returns (``id``, ``epoch`` and the resource's own fields), so a store hands
the API exactly what a client sees and nothing has to be re-mapped twice.
"""

from __future__ import annotations

import dataclasses
import os
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
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """``count`` fresh record ids (see ``new_id``) from one read of the
    system's randomness: a fan-out takes one per subscriber, and
    ``uuid.uuid4`` reads the randomness and builds a ``UUID`` for each."""
    digits = os.urandom(16 * count).hex()
    ids = []
    for start in range(0, 32 * count, 32):
        hexa = digits[start:start + 32]
        # The version nibble is 4, the variant's two top bits are 10.
        ids.append("%s-%s-4%s-%s%s-%s" % (hexa[:8], hexa[8:12], hexa[13:16],
                                          _VARIANT[int(hexa[16], 16) & 3], hexa[17:20], hexa[20:]))
    return ids


#: The hex digit of a UUID's variant field, by its two low bits (RFC 9562).
_VARIANT = "89ab"


def is_uuid(value: str) -> bool:
    """True when ``value`` is a canonical (hyphenated, any case) UUID string."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return str(parsed) == value.lower()
