"""What runs in a worker process: standard library only, and nothing of the parent's side.

The parent starts a worker as ``python -c <boot>`` (``_BOOT`` of the parent's handle on a
worker process), which imports ``child.main`` and nothing else of ours: no anyio, no numpy
(until an array arrives), no cloudpickle (until a pickle needs it), so a cold start costs
~20 ms. ``tests/test_child_imports.py`` proves it on a live worker's ``sys.modules``.

Imports point one way. Modules here import only the standard library and each other. The
parent side imports from here only what both sides share: ``protocol`` (the frames, the
outcomes that cross the pipe, and the array loaders its pickles name) and ``slot``. One
exception: ``async_loop``'s ``InFlight`` also runs the async calls of thread workers
(``backends.thread_loop``) and of dask and Ray workers (``backends.remote``); being standard
library only, sharing it adds nothing to this side.

Invariants owned here:

- one result per call, and which call a dead worker is blamed for: ``slot`` (the slot's
  layout, both sides' views of it, and ``blame``);
- what crosses the pipes, in which frame: ``protocol``;
- what tasks log reaches the parent, before their results: ``observe`` (and ``logs``, imported
  with ``logging``, only once a task imports it); the caller's context variables around each
  call: ``context``;
- how a worker waits for its next job, watching the pipe or asleep: ``waiting``.
"""
