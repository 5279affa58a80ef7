"""Wiring: the app, leadership, housekeeping, sockets and systemd notify."""
