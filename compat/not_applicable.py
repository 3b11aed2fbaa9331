"""joblib 1.6.0 tests (``test_parallel.py``) that do not apply to aioparallel, with the reason.

Keys are fnmatch patterns over the test name (with its parameters); values say why: either
the test exercises a joblib internal, or it checks behaviour aioparallel deliberately
changes (the reason is given). Everything else counts as applicable.
"""

from __future__ import annotations

_INSTANCES = "joblib internal: a joblib backend class instance (ParallelBackendBase) as backend"
_PRIVATE = "joblib internal: reads Parallel's private state (_backend, _effective_n_jobs...)"
_REGISTRY = "joblib internal: register_parallel_backend / joblib's backend classes"
_LOKY = "joblib internal: loky's reusable executor"

NOT_APPLICABLE: dict[str, str] = {
    # backend5..backend8 of ALL_VALID_BACKENDS are joblib's own backend objects
    "test_simple_parallel[*-backend5]": _INSTANCES,
    "test_simple_parallel[*-backend6]": _INSTANCES,
    "test_simple_parallel[*-backend7]": _INSTANCES,
    "test_simple_parallel[*-backend8]": _INSTANCES,
    "test_parallel_pretty_print[*-backend5]": _INSTANCES,
    "test_parallel_pretty_print[*-backend6]": _INSTANCES,
    "test_parallel_pretty_print[*-backend7]": _INSTANCES,
    "test_parallel_pretty_print[*-backend8]": _INSTANCES,
    "test_invalid_njobs[backend5]": _INSTANCES,
    "test_invalid_njobs[backend6]": _INSTANCES,
    "test_invalid_njobs[backend7]": _INSTANCES,
    "test_invalid_njobs[backend8]": _INSTANCES,
    "*back_compat_backend*": _REGISTRY + " (a registered custom backend)",
    "test_invalid_njobs*": _PRIVATE + " (_initialize_backend)",
    "test_njobs_converted_to_int*": _PRIVATE + " (_effective_n_jobs; the conversion itself "
    "is tested in tests/test_compat_api.py)",
    "test_parallel_as_context_manager*": _PRIVATE,
    "test_error_capture*": _PRIVATE + " (the pool object, _aborting)",
    "test_batching_auto_*": _PRIVATE,
    "test_register_parallel_backend": _REGISTRY,
    "test_overwrite_default_backend": _REGISTRY,
    "test_parameterized_backend_context_manager*": _REGISTRY,
    "test_directly_parameterized_backend_context_manager*": _REGISTRY,
    "test_backend_context_manager*": _REGISTRY,
    "test_nested_backend_context_manager*": _REGISTRY,
    "test_nested_backend_in_sequential*": _REGISTRY,
    "test_backend_nesting_level*": _REGISTRY + " (nesting_level)",
    "test_retrieval_context*": _REGISTRY,
    "test_default_mp_context": _PRIVATE,
    "test_backend_batch_statistics_reset*": _PRIVATE,
    "test_backend_hinting_and_constraints*": _PRIVATE + " (the backend class chosen)",
    "test_zero_worker_backend*": _REGISTRY,
    "test_nested_parallelism_limit*": _PRIVATE + " (backend class names and nesting_level; "
    "the behaviour is tested in tests/test_compat_api.py)",
    "test_loky_reuse_workers*": _LOKY,
    "test_threadpool_limitation_in_child_override*": _LOKY,
    "test_multiple_generator_call_separated_gc*": _PRIVATE,
    # deliberate differences
    "test_multiple_generator_call[*": "one Parallel object may be called again "
    "(and concurrently) while a generator call is unfinished; joblib raises",
    "test_multiple_generator_call_managed*": "one Parallel object may be called "
    "concurrently; joblib raises",
    "test_nested_parallel_warnings[loky-multiprocessing-True]": "the inner call is "
    "joblib's own Parallel, run in our worker where the shim does not reach; there "
    "'multiprocessing' is a separate backend",
    "test_nested_parallel_warnings[multiprocessing-*]": "the inner call is joblib's own "
    "Parallel, run in our worker where the shim does not reach; there 'multiprocessing' "
    "is a separate backend",
    "test_memmapping_leaks*": "memmap files are removed when each call ends, not "
    "when the pool is garbage-collected",
}
