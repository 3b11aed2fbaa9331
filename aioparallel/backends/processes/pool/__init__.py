"""The warm pool of worker processes: ``pool`` (hands workers out fairly, reaps idle ones,
shared between runs and event loops) and ``roster`` (its places and who holds each).

Invariant owned here: live worker processes <= n_jobs, by ``roster`` (the only code that
changes the count; ``tests/test_pool_state.py`` drives the pool with a hypothesis state
machine and checks the roster after each step).
"""
