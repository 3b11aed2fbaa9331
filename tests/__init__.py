"""aioparallel's test suite (a package, so workers can import ``tests.helpers`` by name)."""
