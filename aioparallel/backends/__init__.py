"""The backends: where a batch of calls runs. The ``Backend`` protocol is in ``base``."""
