"""The webhook sender: delivers the outbox's events."""
