"""``RunOptions.with_expected_work``, the cheap ``replace`` every run makes."""

from __future__ import annotations

from dataclasses import fields, replace

from aioparallel.backends.base import RunOptions


def test_run_options_with_expected_work_is_replace() -> None:
    def estimate() -> float:
        return 1.0

    options = RunOptions(
        timeout=3.0,
        stop_on_error=False,
        max_nbytes=None,
        mmap_mode="c",
        temp_folder="/somewhere",
        worker_concurrency=5,
    )
    made = options.with_expected_work(estimate)
    assert type(made) is RunOptions
    assert made == replace(options, expected_work=estimate)
    assert {f.name: getattr(made, f.name) for f in fields(made)} == {
        **{f.name: getattr(options, f.name) for f in fields(options)},
        "expected_work": estimate,
    }
    assert options.expected_work is None
