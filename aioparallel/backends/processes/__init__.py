"""The process backend, parent side: each worker is a fresh interpreter that runs
``aioparallel.child`` and talks to this side over its own pipes and crash slot.

Modules: ``backend`` (``ProcessBackend``: the pool and each run's workers and temp folder),
``batch`` (``BatchRun``: one batch's life: send, receive, crash -> blame -> re-run),
``crash`` (a dead worker's verdicts -> the errors users read), ``worker`` (the parent's
handle on one worker process: spawn, frames, liveness), ``process`` (a child process the
loop can await, kill with its group and reap once; the pids killed at exit), ``pool/``
(warm workers shared between runs), ``pickling`` (a job's frame: on the loop while cheap,
else a thread), ``tempfiles`` (run folders, memmapped arrays) and ``tracker`` (removes them
after a crash).

Invariants owned here, one module each:

- live worker processes <= n_jobs: ``pool.roster``;
- temp files removed on every exit, a crash or SIGKILL included: ``tempfiles`` and the
  folder ``tracker`` (a standalone script: it runs as ``python -I -S tracker.py``);
- cancellation reaches the workers (their async tasks cancelled, a stuck worker killed):
  ``batch``.
"""
