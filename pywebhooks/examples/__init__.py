"""Example programs that talk to PyWebhooks."""
