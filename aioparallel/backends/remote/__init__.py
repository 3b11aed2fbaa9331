"""What the backends that run a batch on a remote engine's worker (dask, Ray) share.

``runner`` is the half that runs on the engine's worker: a batch's calls in order, each to
exactly one pickled outcome (sync calls with a per-call timeout, async calls on an event
loop), stopping at the first failure when asked. ``client`` is the half in the caller's
process: large arrays sent once per run, outcomes unpickled (off the event loop when large),
task errors given their index and remote traceback, a dead worker made a
``WorkerCrashedError`` naming the task. Each engine's own package (``dask/``, ``ray/``) keeps
only how it submits, awaits and cancels.
"""
