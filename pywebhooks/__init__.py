"""PyWebhooks: a webhooks service on one Twisted reactor."""

__version__ = "1.0.0.dev0"
