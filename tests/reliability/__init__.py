"""Reliability suite: docs/cancellation.md under abuse (worker faults, bad data, cancellation,
load)."""
