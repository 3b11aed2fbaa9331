"""Reliability suite: SPEC §6 under abuse (worker faults, bad data, cancellation, load)."""
