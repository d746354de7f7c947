"""``MemoryStore``: an ``IStore`` in plain dicts, for unit tests.

It behaves exactly like the SQLite store (the same behavioural suite runs
against both), so a unit test that passes here passes on disk.  This module
also holds the record shapes every store checks (``RECORD_FIELDS``) and the
helpers that make a stored value independent of the caller's objects.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable, Iterable, Mapping

from zope.interface import implementer

from pywebhooks.errors import DuplicateUsername, StoreError
from pywebhooks.records import Page, Record, WriteResult
from pywebhooks.store.interface import IStore

#: The exact keys of each kind of record (see ``IStore``), ``id`` first.
RECORD_FIELDS: dict[str, tuple[str, ...]] = {
    "account": (
        "id", "username", "endpoint", "api_key", "secret_key", "is_admin", "failed_count", "epoch",
    ),
    "registration": ("id", "account_id", "event", "description", "event_data", "epoch"),
    "subscription": ("id", "account_id", "registration_id", "epoch"),
    "firing": ("id", "registration_id", "epoch"),
    "delivery": (
        "id", "firing_id", "registration_id", "subscription_id", "account_id",
        "event", "endpoint", "state", "attempts", "epoch",
    ),
}

#: Fields holding arbitrary JSON: stored as JSON text, so they come back as
#: ``json.loads(json.dumps(value))`` from every store.
JSON_FIELDS = frozenset({"event_data", "attempts"})

#: Fields that come back as ``bool``.
BOOL_FIELDS = frozenset({"is_admin"})


def check_record(kind: str, record: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless ``record`` has exactly the keys of ``kind``."""
    expected = set(RECORD_FIELDS[kind])
    actual = set(record)
    if actual != expected:
        raise ValueError(
            "%s record: missing %s, unknown %s"
            % (kind, sorted(expected - actual), sorted(actual - expected))
        )


def check_changes(kind: str, changes: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless every key of ``changes`` is an updatable field."""
    unknown = set(changes) - set(RECORD_FIELDS[kind][1:])
    if unknown:
        raise ValueError("%s update: cannot set %s" % (kind, sorted(unknown)))


def normalize(field: str, value: Any) -> Any:
    """``value`` as every store gives it back: JSON round-tripped, bools as bool."""
    if field in JSON_FIELDS:
        return json.loads(json.dumps(value))
    if field in BOOL_FIELDS:
        return bool(value)
    return copy.deepcopy(value)


def normalized(fields: Mapping[str, Any]) -> Record:
    """A fresh dict of normalised values."""
    return {field: normalize(field, value) for field, value in fields.items()}


def delivery_state(current: str, attempt: Mapping[str, Any], final: bool) -> str:
    """A delivery's state after ``attempt``."""
    if attempt["ok"]:
        return "delivered"
    if final:
        return "failed"
    return current


def check_page(start: int, limit: int) -> None:
    """Raise ``ValueError`` for a negative ``start`` or a ``limit`` below 1."""
    if start < 0 or limit < 1:
        raise ValueError("invalid page: start=%r limit=%r" % (start, limit))


def deleted(count: int) -> WriteResult:
    """The result of a delete by id (``count`` 0 or 1)."""
    return WriteResult(deleted=1) if count else WriteResult(skipped=1)


@implementer(IStore)
class MemoryStore:
    """Every record in insertion-ordered dicts; nothing survives the process."""

    def __init__(self) -> None:
        self._accounts: dict[str, Record] = {}
        self._registrations: dict[str, Record] = {}
        self._subscriptions: dict[str, Record] = {}
        self._firings: dict[str, Record] = {}
        self._deliveries: dict[str, Record] = {}
        # The owner of the registration at the time a subscription or a
        # firing was made (the SQLite store keeps the same column).
        self._owners: dict[str, str | None] = {}

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release."""

    async def initialize(self, drop: bool) -> None:
        """Forget every record if ``drop``."""
        if drop:
            for table in self._tables():
                table.clear()
            self._owners.clear()

    def _tables(self) -> tuple[dict[str, Record], ...]:
        return (
            self._accounts, self._registrations, self._subscriptions,
            self._firings, self._deliveries,
        )

    # -- shared helpers --------------------------------------------------

    @staticmethod
    def _insert(table: dict[str, Record], kind: str, record: Record) -> None:
        check_record(kind, record)
        if record["id"] in table:
            raise StoreError("duplicate %s id %s" % (kind, record["id"]))
        table[record["id"]] = normalized(record)

    @staticmethod
    def _get(table: dict[str, Record], record_id: str) -> Record | None:
        record = table.get(record_id)
        return None if record is None else copy.deepcopy(record)

    @staticmethod
    def _update(
        table: dict[str, Record], kind: str, record_id: str, changes: Mapping[str, Any]
    ) -> WriteResult:
        check_changes(kind, changes)
        record = table.get(record_id)
        if record is None:
            return WriteResult(skipped=1)
        new = normalized(changes)
        if all(record[field] == value for field, value in new.items()):
            return WriteResult(unchanged=1)
        record.update(new)
        return WriteResult(replaced=1)

    @staticmethod
    def _delete_where(table: dict[str, Record], keep: Callable[[Record], bool]) -> int:
        doomed = [key for key, record in table.items() if not keep(record)]
        for key in doomed:
            del table[key]
        return len(doomed)

    @staticmethod
    def _page(rows: Iterable[Record], start: int, limit: int) -> Page:
        check_page(start, limit)
        window = []
        for index, row in enumerate(rows):
            if index >= start + limit + 1:
                break
            if index >= start:
                window.append(row)
        return Page(
            rows=[copy.deepcopy(row) for row in window[:limit]],
            more=len(window) > limit,
        )

    # -- accounts --------------------------------------------------------

    async def insert_account(self, account: Record) -> None:
        """Insert a new account; ``DuplicateUsername`` if the name is taken."""
        check_record("account", account)
        self._check_username_free(account["username"], None)
        self._insert(self._accounts, "account", account)

    def _check_username_free(self, username: str, owner_id: str | None) -> None:
        for record in self._accounts.values():
            if record["username"] == username and record["id"] != owner_id:
                raise DuplicateUsername(username)

    async def get_account(self, account_id: str) -> Record | None:
        """The account with this id, or None."""
        return self._get(self._accounts, account_id)

    async def get_account_by_username(self, username: str) -> Record | None:
        """The account with exactly this username, or None."""
        for record in self._accounts.values():
            if record["username"] == username:
                return copy.deepcopy(record)
        return None

    async def update_account(self, account_id: str, changes: Mapping[str, Any]) -> WriteResult:
        """Set the fields in ``changes``; ``DuplicateUsername`` if a new name is taken."""
        if "username" in changes and account_id in self._accounts:
            self._check_username_free(changes["username"], account_id)
        return self._update(self._accounts, "account", account_id, changes)

    async def delete_account(self, account_id: str) -> WriteResult:
        """Delete the account, its subscriptions, its registrations and every
        subscription to them."""
        owned = {
            key for key, record in self._registrations.items()
            if record["account_id"] == account_id
        }
        self._delete_where(
            self._subscriptions,
            lambda s: s["account_id"] != account_id and s["registration_id"] not in owned,
        )
        self._delete_where(self._registrations, lambda r: r["id"] not in owned)
        return deleted(self._delete_where(self._accounts, lambda a: a["id"] != account_id))

    async def delete_non_admin_accounts(self) -> WriteResult:
        """Delete every non-admin account, with no cascade."""
        return WriteResult(deleted=self._delete_where(self._accounts, lambda a: a["is_admin"]))

    async def list_accounts(self, start: int, limit: int) -> Page:
        """A ``Page`` of all accounts."""
        return self._page(self._accounts.values(), start, limit)

    async def count_accounts(self) -> int:
        """How many accounts exist."""
        return len(self._accounts)

    # -- registrations ---------------------------------------------------

    async def insert_registration(self, registration: Record) -> None:
        """Insert a registration."""
        self._insert(self._registrations, "registration", registration)

    async def get_registration(self, registration_id: str) -> Record | None:
        """The registration, or None."""
        return self._get(self._registrations, registration_id)

    async def update_registration(
        self, registration_id: str, changes: Mapping[str, Any]
    ) -> WriteResult:
        """Set the fields in ``changes``."""
        return self._update(self._registrations, "registration", registration_id, changes)

    async def delete_registration(self, registration_id: str) -> WriteResult:
        """Delete the registration and every subscription to it."""
        self._delete_where(
            self._subscriptions, lambda s: s["registration_id"] != registration_id
        )
        return deleted(
            self._delete_where(self._registrations, lambda r: r["id"] != registration_id)
        )

    async def delete_all_registrations(self) -> WriteResult:
        """Delete every registration, leaving subscriptions."""
        return WriteResult(deleted=self._delete_where(self._registrations, lambda r: False))

    async def list_registrations(
        self, start: int, limit: int, account_id: str | None = None
    ) -> Page:
        """A ``Page`` of registrations, only ``account_id``'s if given."""
        rows: Iterable[Record] = self._registrations.values()
        if account_id is not None:
            rows = [r for r in rows if r["account_id"] == account_id]
        return self._page(rows, start, limit)

    async def count_registrations(self, account_id: str) -> int:
        """How many registrations ``account_id`` owns."""
        return sum(1 for r in self._registrations.values() if r["account_id"] == account_id)

    # -- subscriptions ---------------------------------------------------

    def _owner_of(self, registration_id: str) -> str | None:
        registration = self._registrations.get(registration_id)
        return None if registration is None else registration["account_id"]

    async def insert_subscription(self, subscription: Record) -> None:
        """Insert a subscription (duplicates are allowed)."""
        self._insert(self._subscriptions, "subscription", subscription)
        self._owners[subscription["id"]] = self._owner_of(subscription["registration_id"])

    async def get_subscription(self, subscription_id: str) -> Record | None:
        """The subscription, or None."""
        return self._get(self._subscriptions, subscription_id)

    async def delete_subscription(self, subscription_id: str) -> WriteResult:
        """Delete one subscription."""
        return deleted(
            self._delete_where(self._subscriptions, lambda s: s["id"] != subscription_id)
        )

    async def delete_all_subscriptions(self) -> WriteResult:
        """Delete every subscription."""
        return WriteResult(deleted=self._delete_where(self._subscriptions, lambda s: False))

    async def list_subscriptions(
        self,
        start: int,
        limit: int,
        account_id: str | None = None,
        visible_to: str | None = None,
    ) -> Page:
        """A ``Page`` of subscriptions, filtered by subscriber and/or visibility."""
        rows: Iterable[Record] = self._subscriptions.values()
        if account_id is not None:
            rows = [s for s in rows if s["account_id"] == account_id]
        if visible_to is not None:
            rows = [
                s for s in rows
                if s["account_id"] == visible_to or self._owners.get(s["id"]) == visible_to
            ]
        return self._page(rows, start, limit)

    async def count_subscriptions(self, account_id: str) -> int:
        """How many subscriptions ``account_id`` holds."""
        return sum(1 for s in self._subscriptions.values() if s["account_id"] == account_id)

    async def subscribers(self, registration_id: str) -> list[Record]:
        """The live subscribers of one registration, in subscription order."""
        fan_out = []
        for subscription in self._subscriptions.values():
            if subscription["registration_id"] != registration_id:
                continue
            account = self._accounts.get(subscription["account_id"])
            if account is None:
                continue
            fan_out.append({
                "subscription_id": subscription["id"],
                "account_id": account["id"],
                "endpoint": account["endpoint"],
                "secret_key": account["secret_key"],
                "failed_count": account["failed_count"],
            })
        return copy.deepcopy(fan_out)

    # -- firings and deliveries -------------------------------------------

    async def insert_firing(self, firing: Record, deliveries: list[Record]) -> None:
        """Record a firing and its deliveries together (all or nothing)."""
        check_record("firing", firing)
        for delivery in deliveries:
            check_record("delivery", delivery)
        ids = [delivery["id"] for delivery in deliveries]
        if len(set(ids)) != len(ids) or any(key in self._deliveries for key in ids):
            raise StoreError("duplicate delivery id")
        self._insert(self._firings, "firing", firing)
        self._owners[firing["id"]] = self._owner_of(firing["registration_id"])
        for delivery in deliveries:
            self._insert(self._deliveries, "delivery", delivery)

    async def list_firings(self, start: int, limit: int, owner_id: str | None = None) -> Page:
        """A ``Page`` of firings, only those of ``owner_id``'s registrations if given."""
        rows: Iterable[Record] = self._firings.values()
        if owner_id is not None:
            rows = [f for f in rows if self._owners.get(f["id"]) == owner_id]
        return self._page(rows, start, limit)

    async def get_deliveries(self, firing_id: str) -> list[Record]:
        """The deliveries of one firing, in creation order."""
        return [
            copy.deepcopy(d) for d in self._deliveries.values() if d["firing_id"] == firing_id
        ]

    async def record_attempt(
        self, firing_id: str, delivery_id: str, account_id: str, attempt: Mapping[str, Any], final: bool
    ) -> int | None:
        """Log ``attempt`` on the delivery and count it on the subscriber."""
        delivery = self._deliveries.get(delivery_id)
        if delivery is not None and delivery["firing_id"] == firing_id:
            delivery["attempts"].append(normalize("attempts", attempt))
            delivery["state"] = delivery_state(delivery["state"], attempt, final)
        account = self._accounts.get(account_id)
        if account is None:
            return None
        account["failed_count"] = 0 if attempt["ok"] else account["failed_count"] + 1
        return account["failed_count"]
