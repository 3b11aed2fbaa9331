"""The verbose helpers reproduce joblib's exactly (docs/progress.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from joblib.logger import short_format_time as joblib_short_format_time
from joblib.parallel import _verbosity_filter as joblib_verbosity_filter

from aioparallel.run.progress import short_format_time, verbosity_filter


def test_verbosity_filter_matches_joblib() -> None:
    mismatches = [
        (index, verbose)
        for verbose in range(12)
        for index in range(2001)
        if verbosity_filter(index, verbose) != joblib_verbosity_filter(index, verbose)
    ]
    assert mismatches == []


@pytest.mark.parametrize("verbose", [0, 1, 5, 10, 11, 50, 100])
def test_verbosity_filter_edges(verbose: int) -> None:
    assert verbosity_filter(0, verbose) is joblib_verbosity_filter(0, verbose)
    if verbose == 0:
        assert all(verbosity_filter(i, 0) for i in range(100))  # never report
    if verbose > 10:
        assert not any(verbosity_filter(i, verbose) for i in range(100))  # always report


@pytest.mark.parametrize(
    "t",
    [0, 0.04, 0.05, 0.06, 0.15, 0.25, 1, 9.95, 59.94, 59.96, 60, 60.01, 61, 599.99, 3599, 1e6],
)
def test_short_format_time_matches_joblib(t: float) -> None:
    assert short_format_time(t) == joblib_short_format_time(t)


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False))
def test_short_format_time_matches_joblib_everywhere(t: float) -> None:
    assert short_format_time(t) == joblib_short_format_time(t)


def test_short_format_time_examples() -> None:
    assert short_format_time(0.2) == "   0.2s"
    assert short_format_time(59.0) == "  59.0s"
    assert short_format_time(123.4) == " 2.1min"
    assert short_format_time(90) == " 1.5min"
