"""Benchmarks comparing aioparallel with its peers (see ``benchmarks/README.md``).

The package is split so that each piece can be read on its own:

- ``workloads``: the module-level task functions every peer can pickle.
- ``peers``: one small async adapter per peer library, all with the same ``map``.
- ``probes``: what we measure with (RSS sampler thread, event-loop heartbeat).
- ``child``: entry points run in a fresh interpreter, so memory peaks don't mix.
- ``report``: machine info, the tables, target verdicts, JSON and the plot.
- ``run``: the CLI and one function per workload W1-W10.

Nothing here imports a peer library at import time: a cold-start measurement (W4)
must pay only for the peer it measures.
"""
