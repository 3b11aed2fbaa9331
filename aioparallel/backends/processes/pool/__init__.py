"""The warm pool of worker processes: ``pool`` (hands workers out fairly, reaps idle ones,
shared between runs and event loops), ``run_workers`` (one run's place in line and the
workers it keeps between batches), ``shared`` (the process-wide pools, their reaper thread,
``shutdown_workers()``), ``roster`` (its places and who holds each, and its counts),
``recycling`` (when a worker is replaced: ``max_tasks_per_worker``, ``max_worker_memory``)
and ``stats`` (``pool_stats()``, read from any thread).

Invariant owned here: live worker processes <= n_jobs, by ``roster`` (the only code that
changes the count; ``tests/test_pool_state.py`` drives the pool with a hypothesis state
machine and checks the roster after each step). A recycled worker's successor takes a place
through the roster like any other (``Roster.claim_free``), once the old one's is free.
"""
