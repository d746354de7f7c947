"""The durable ledger of pending deliveries (due times and payloads)."""

from pywebhooks.ledger.interface import ILedger, PendingDelivery

__all__ = ["ILedger", "PendingDelivery"]
