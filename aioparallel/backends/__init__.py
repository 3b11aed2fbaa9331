"""The backends: where a batch of calls runs. ``base`` holds the ``Backend`` protocol every
backend implements; ``sequential`` and ``threads`` (with ``thread_loop``, a thread's batch
on its own event loop) run in the caller's process;
``processes/`` (worker processes running ``aioparallel.child``), ``dask/`` (a
``distributed`` cluster) and ``ray/`` (Ray tasks) run elsewhere; ``remote/`` is what dask and
Ray share (the batch runner on their workers, the client's arrays, unpacking and crash
errors). Shared by several of them: ``setup`` (initializers),
``failures`` (the errors a failed call becomes), ``timed`` (deadlines of thread calls),
``crossloop`` (waking a task in another thread's event loop), ``unpickling`` (large results
unpickled without starving the loop).

Invariants owned here, one module each:

- one outcome per call, in input order, whatever the backend: the ``Backend`` protocol in
  ``base`` (a backend returns one value or ``Failure`` per call of its batch);
- live worker processes <= n_jobs: ``processes.pool.roster``;
- which call a dead worker is blamed for: ``aioparallel.child.slot``;
- temp files removed on every exit: ``processes.tempfiles`` and ``processes.tracker``;
- cancellation reaches the workers: ``processes.batch``.
"""
