"""Promises kept: the outbox relay sends what a committed transaction said would be sent."""
