"""Turning medians into something to read: machine info, tables, targets, JSON, plot.

The tables are Markdown so a run can be pasted into ``shared/BENCHMARKS.md`` or an
issue as is. Targets are the ones in BENCHMARKS.md; a figure that can't be judged
(a peer skipped or failed) says ``n/a`` rather than passing silently.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: flat figures: peer -> column key ("W1.calls_per_s") -> median value
Table = dict[str, dict[str, float]]

REFERENCE = "joblib-loky"
PACKAGES = (
    "aioparallel",
    "anyio",
    "cloudpickle",
    "joblib",
    "aiomultiprocess",
    "mpire",
    "numpy",
    "psutil",
    "matplotlib",
)


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    higher_is_better: bool
    fmt: str


COLUMNS = (
    Column("W1.calls_per_s", "W1 calls/s", True, "{:,.0f}"),
    Column("W2.speedup", "W2 speedup", True, "{:.2f}"),
    Column("W3.p50_us", "W3 p50 µs", False, "{:,.0f}"),
    Column("W3.p99_us", "W3 p99 µs", False, "{:,.0f}"),
    Column("W4.seconds", "W4 cold s", False, "{:.3f}"),
    Column("W5.seconds", "W5 s", False, "{:.3f}"),
    Column("W5.extra_mb", "W5 +MB", False, "{:,.0f}"),
    Column("W6.p99_ms", "W6 lag p99 ms", False, "{:,.1f}"),
    Column("W6.max_ms", "W6 lag max ms", False, "{:,.1f}"),
    Column("W7.parent_mb", "W7 parent +MB", False, "{:,.1f}"),
    Column("W8.seconds", "W8 async s", False, "{:.3f}"),
)


@dataclass(frozen=True)
class Target:
    wid: str
    text: str
    key: str
    #: (table, w5 array MB) -> the bound aioparallel's value is compared with, or None
    bound: Callable[[Table, float], float | None]
    higher_is_better: bool


def _peer(peer: str, key: str) -> Callable[[Table, float], float | None]:
    return lambda t, _mb: t.get(peer, {}).get(key)


def _const(v: float) -> Callable[[Table, float], float | None]:
    return lambda _t, _mb: v


TARGETS = (
    Target(
        "W1", "calls/s >= joblib-loky", "W1.calls_per_s", _peer(REFERENCE, "W1.calls_per_s"), True
    ),
    Target("W2", "speedup >= 1.9", "W2.speedup", _const(1.9), True),
    Target(
        "W3", "p50 <= run_in_executor's", "W3.p50_us", _peer("run_in_executor", "W3.p50_us"), False
    ),
    Target("W4", "cold s <= joblib-loky", "W4.seconds", _peer(REFERENCE, "W4.seconds"), False),
    Target("W5", "time <= joblib-loky", "W5.seconds", _peer(REFERENCE, "W5.seconds"), False),
    Target("W5", "peak <= 1.2 x array above idle", "W5.extra_mb", lambda _t, mb: 1.2 * mb, False),
    Target("W6", "lag p99 <= 5 ms", "W6.p99_ms", _const(5.0), False),
    Target("W6", "lag max <= 20 ms", "W6.max_ms", _const(20.0), False),
    Target("W7", "parent growth <= 50 MB", "W7.parent_mb", _const(50.0), False),
    Target(
        "W8", "s <= aiomultiprocess's", "W8.seconds", _peer("aiomultiprocess", "W8.seconds"), False
    ),
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _interpreter_start_s() -> float:
    """Bare ``python -c pass``: the floor under every W4 figure."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info() -> dict[str, Any]:
    import psutil

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "interpreter_start_s": round(_interpreter_start_s(), 4),
        # Other work on the machine shows up in every figure (2 cores: any of it).
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _fmt(col: Column, value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return col.fmt.format(value)


def _md(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def verdicts(table: Table, array_mb: float, wids: list[str]) -> list[dict[str, Any]]:
    """aioparallel against each BENCHMARKS.md target of ``wids``: ok, MISS, or n/a."""
    out = []
    for t in (t for t in TARGETS if t.wid in wids):
        value = table.get("aioparallel", {}).get(t.key)
        bound = t.bound(table, array_mb)
        if value is None or bound is None or math.isnan(value) or math.isnan(bound):
            verdict = "n/a"
        elif t.higher_is_better:
            verdict = "ok" if value >= bound else "MISS"
        else:
            verdict = "ok" if value <= bound else "MISS"
        out.append(
            {
                "id": t.wid,
                "target": t.text,
                "key": t.key,
                "value": value,
                "bound": bound,
                "verdict": verdict,
            }
        )
    return out


def render(
    table: Table,
    peers: list[str],
    targets: list[dict[str, Any]],
    machine: dict[str, Any],
    notes: list[str],
    mode: str,
) -> str:
    cols = [c for c in COLUMNS if any(c.key in table.get(p, {}) for p in peers)]
    by_key = {c.key: c for c in COLUMNS}
    pkgs = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    parts = [
        f"## aioparallel benchmarks ({mode}) — {machine['date']}",
        f"{machine['cpu']}; {machine['cores_usable']} usable cores; {machine['python']}; "
        f"{machine['memory_gb']} GB; bare interpreter start {machine['interpreter_start_s']:.3f} s",
        pkgs,
        "",
        "### Medians",
        _md(
            ["peer", *(c.label for c in cols)],
            [[p, *(_fmt(c, table.get(p, {}).get(c.key)) for c in cols)] for p in peers],
        ),
    ]
    ref = table.get(REFERENCE, {})
    if ref:
        ratio_rows = []
        for p in peers:
            cells = []
            for c in cols:
                v, r = table.get(p, {}).get(c.key, math.nan), ref.get(c.key, math.nan)
                cells.append("-" if math.isnan(v) or math.isnan(r) or r == 0 else f"{v / r:.2f}")
            ratio_rows.append([p, *cells])
        parts += [
            "",
            f"### Ratio to {REFERENCE}",
            _md(["peer", *(c.label for c in cols)], ratio_rows),
        ]
    rows = []
    for t in targets:
        col = by_key[t["key"]]
        rows.append(
            [t["id"], t["target"], _fmt(col, t["value"]), _fmt(col, t["bound"]), t["verdict"]]
        )
    parts += [
        "",
        "### aioparallel against targets",
        _md(["id", "target", "aioparallel", "bound", "ok/MISS"], rows),
    ]
    if mode != "full":
        parts.append(f"\n({mode} mode: sizes are scaled down, so verdicts are indicative only.)")
    if notes:
        parts += ["", "### Notes", *(f"- {n}" for n in notes)]
    return "\n".join(parts)


def plot(table: Table, peers: list[str], path: str) -> None:
    """One small panel per figure: each peer's value divided by joblib-loky's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ref = table.get(REFERENCE, {})
    cols = [c for c in COLUMNS if ref.get(c.key)]
    ncols = 5
    nrows = max(1, math.ceil(len(cols) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(cols) :]:
        ax.set_visible(False)
    for ax, col in zip(axes.flat, cols, strict=False):
        names = [p for p in peers if table.get(p, {}).get(col.key) is not None]
        ratios = [max(table[p][col.key] / ref[col.key], 1e-3) for p in names]
        colors = ["tab:red" if p == "aioparallel" else "tab:gray" for p in names]
        bars = ax.barh(names, ratios, color=colors)
        ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.25)
        ax.invert_yaxis()
        better = "higher" if col.higher_is_better else "lower"
        ax.set_title(f"{col.label}\n(÷ {REFERENCE}; {better} is better)", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
