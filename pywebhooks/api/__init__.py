"""The Klein HTTP API (``/v1``)."""

from pywebhooks.api.app import PyWebhooksAPI

__all__ = ["PyWebhooksAPI"]
