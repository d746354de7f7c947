"""Exceptions that cross module boundaries (store, ledger, API)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of storage failures."""


class StoreUnavailable(StoreError):
    """The store or the ledger cannot be reached or written right now (HTTP 503)."""


class DuplicateUsername(StoreError):
    """An account with this username already exists (HTTP 409)."""


class DatabaseMissing(StoreError):
    """The configured database has not been initialised (run ``--initdb``)."""
