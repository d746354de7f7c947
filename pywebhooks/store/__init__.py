"""Storage of accounts, registrations, subscriptions, firings and deliveries."""

from pywebhooks.store.interface import IStore

__all__ = ["IStore"]
