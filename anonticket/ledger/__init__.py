"""The in-memory views over storage and their rules."""
