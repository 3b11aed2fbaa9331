"""One run of ``Parallel(...)(calls)``, from the user's iterable to the caller's results.

``run`` owns the run's one task group and opens with a drawing of how data flows through
it: the input (``source``), how far ahead of the results it is read (``budget``), how calls
are grouped into batches (``batching``), where results go (``results``: the list and stream
sinks; ``stream``: the async iterator a caller reads them from), and the progress reports
(``progress``). An input of one call skips all that (``single``): straight to the backend's
batch. Both deliver a batch's outcomes the same way (``outcomes``).

Invariant owned here: a run stops at its first failure (a task's error without
``return_exceptions``, or an error of the input), cancels the rest and raises that failure
with its own type: ``run``, through ``outcomes.settle``.
"""
