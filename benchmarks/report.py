"""Turning medians into something to read: machine info, tables, targets, JSON, plot.

The tables are Markdown so a run can be pasted into the docs page or an issue as is.
Targets are the ones benchmarks/README.md lists; a figure that can't be judged
(a peer skipped or failed) says ``n/a`` rather than passing silently.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.workloads import W8_CPU_SECONDS, W8_WAIT_SECONDS

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
    Column("W5.extra_mb", "W5 RSS +MB", False, "{:,.0f}"),
    Column("W5.shm_mb", "W5 tmpfs +MB", False, "{:,.0f}"),
    Column("W6.p99_ms", "W6 lag p99 ms (median)", False, "{:,.1f}"),
    Column("W6.max_ms", "W6 lag max ms (all rounds)", False, "{:,.1f}"),
    Column("W7.parent_mb", "W7 parent +MB", False, "{:,.1f}"),
    Column("W8.seconds", "W8 async s", False, "{:.3f}"),
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


# --- targets (benchmarks/README.md) ------------------------------------------------

#: Peers never counted in "ahead of every peer": the sequential loop is a baseline, not
#: an alternative (its W3 "latency" is a function call).
NOT_A_PEER = ("aioparallel", "sequential")
#: W8's shape, for its ideal: per-worker concurrency of both aioparallel and aiomultiprocess.
W8_CONCURRENCY = 16
N_JOBS = 2


def _best_peer(table: Table, key: str) -> tuple[float | None, str]:
    """The lowest value of ``key`` among real peers, and whose it is."""
    values = [(f[key], p) for p, f in table.items() if p not in NOT_A_PEER and key in f]
    if not values:
        return None, "every peer"
    value, name = min(values)
    return value, f"best peer ({name})"


def w9_callers(table: Table) -> list[int]:
    """The caller counts of W9's sweep found in the table (keys ``W9.<N>.total_s``)."""
    found = {int(k.split(".")[1]) for f in table.values() for k in f if k.startswith("W9.")}
    return sorted(found)


def _row(
    wid: str,
    text: str,
    key: str,
    value: float | None,
    ref: float | None,
    ref_label: str,
    factor: float = 1.0,
    *,
    higher: bool = False,
) -> dict[str, Any]:
    """One verdict: ``value`` against ``factor x ref``; the ratio shown is value / ref."""
    bound = None if ref is None else factor * ref
    verdict, ratio = "n/a", None
    if value is not None and bound is not None and not math.isnan(value + bound):
        ratio = value / ref if ref else None  # a bound of 0 has no ratio, still a verdict
        met = value >= bound if higher else value <= bound
        verdict = "met" if met else "MISS"
    return {
        "id": wid,
        "target": text,
        "key": key,
        "value": value,
        "bound": bound,
        "ratio": ratio,
        "ratio_to": ref_label,
        "needed": f"{'>=' if higher else '<='} {factor:g}",
        "verdict": verdict,
    }


def verdicts(
    table: Table, wids: list[str], *, array_mb: float, w8_calls: int
) -> list[dict[str, Any]]:
    """aioparallel against each target of ``wids``: met, MISS, or n/a.

    A target against peers is judged only against peers in the table (a skipped or
    failed peer is no bound); one with no bound at all is ``n/a``, never met.
    """
    ours = table.get("aioparallel", {})

    def peer(name: str, key: str) -> float | None:
        return table.get(name, {}).get(key)

    rows: list[dict[str, Any]] = []
    if "W1" in wids:
        k = "W1.calls_per_s"
        rows.append(
            _row("W1", "calls/s >= 2 x joblib-loky", k, ours.get(k), peer(REFERENCE, k),
                 REFERENCE, 2.0, higher=True)
        )  # fmt: skip
    if "W2" in wids:
        k = "W2.speedup"
        rows.append(_row("W2", "speedup >= 1.9", k, ours.get(k), 1.9, "1.9", higher=True))
    if "W3" in wids:
        k = "W3.p50_us"
        rows.append(
            _row("W3", "p50 <= 0.8 x anyio.to_process's", k, ours.get(k),
                 peer("anyio.to_process", k), "anyio.to_process", 0.8)
        )  # fmt: skip
        k = "W3.p99_us"
        best, label = _best_peer(table, k)
        rows.append(_row("W3", "p99 <= every peer's", k, ours.get(k), best, label))
    if "W4" in wids:
        k = "W4.seconds"
        rows.append(
            _row("W4", "cold s <= 0.5 x joblib-loky's", k, ours.get(k), peer(REFERENCE, k),
                 REFERENCE, 0.5)
        )  # fmt: skip
    if "W5" in wids:
        for k, text in (("W5.seconds", "time"), ("W5.extra_mb", "RSS growth")):
            rows.append(
                _row("W5", f"{text} <= joblib-loky's", k, ours.get(k), peer(REFERENCE, k),
                     REFERENCE)
            )  # fmt: skip
        k = "W5.shm_mb"
        rows.append(_row("W5", "tmpfs growth <= 1.0 x array", k, ours.get(k), array_mb, "array"))
    if "W6" in wids:
        rows.append(_row("W6", "lag p99 <= 5 ms", "W6.p99_ms", ours.get("W6.p99_ms"), 5.0, "5 ms"))
        k = "W6.max_ms"
        rows.append(_row("W6", "lag max <= 20 ms, over every round", k, ours.get(k), 20.0, "20 ms"))
    if "W7" in wids:
        k = "W7.parent_mb"
        rows.append(_row("W7", "parent growth <= 50 MB", k, ours.get(k), 50.0, "50 MB"))
    if "W8" in wids:
        k = "W8.seconds"
        rows.append(
            _row("W8", "s <= aiomultiprocess's", k, ours.get(k), peer("aiomultiprocess", k),
                 "aiomultiprocess")
        )  # fmt: skip
        ideal = max(
            w8_calls * W8_CPU_SECONDS / N_JOBS,
            w8_calls * W8_WAIT_SECONDS / (N_JOBS * W8_CONCURRENCY),
        )
        rows.append(_row("W8", "s <= 1.2 x ideal", k, ours.get(k), ideal, "ideal", 1.2))
    if "W9" in wids:
        for n in w9_callers(table):
            k = f"W9.{n}."
            rows.append(
                _row("W9", f"{n} callers: total <= 1.15 x ideal", k + "x_ideal",
                     ours.get(k + "x_ideal"), 1.0, "ideal", 1.15)
            )  # fmt: skip
            rows.append(
                _row("W9", f"{n} callers: p50 <= 0.6 x total", k + "p50_ms",
                     ours.get(k + "p50_ms"), _ms(ours.get(k + "total_s")), "total", 0.6)
            )  # fmt: skip
            for fig, text in (("total_s", "total"), ("p50_ms", "p50"), ("p99_ms", "p99")):
                best, label = _best_peer(table, k + fig)
                rows.append(
                    _row("W9", f"{n} callers: {text} <= every peer's", k + fig,
                         ours.get(k + fig), best, label)
                )  # fmt: skip
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


# --- tables --------------------------------------------------------------------------


def _fmt(fmt: str, value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return fmt.format(value)


def _md(header: list[str], rows: list[list[str]], text_cols: int = 1) -> str:
    """A Markdown table: the first ``text_cols`` columns left-aligned, numbers right."""
    align = ["---"] * text_cols + ["---:"] * (len(header) - text_cols)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def medians_table(table: Table, peers: list[str]) -> str:
    cols = [c for c in COLUMNS if any(c.key in table.get(p, {}) for p in peers)]
    if not cols:  # a run of W9 alone
        return ""
    return _md(
        ["peer", *(c.label for c in cols)],
        [[p, *(_fmt(c.fmt, table.get(p, {}).get(c.key)) for c in cols)] for p in peers],
    )


def ratios_table(table: Table, peers: list[str]) -> str:
    """Each figure divided by joblib-loky's (empty when joblib-loky did not run)."""
    ref = table.get(REFERENCE, {})
    cols = [c for c in COLUMNS if ref.get(c.key)]
    rows = []
    for p in peers:
        cells = []
        for c in cols:
            v = table.get(p, {}).get(c.key)
            cells.append("-" if v is None or math.isnan(v) else f"{v / ref[c.key]:.2f}")
        rows.append([p, *cells])
    return _md(["peer", *(c.label for c in cols)], rows) if cols else ""


def w9_table(table: Table, peers: list[str]) -> str:
    """W9: a row per peer, a column per caller count: total / x ideal / p50 / p99."""
    ns = w9_callers(table)
    rows = []
    for p in peers:
        f = table.get(p, {})
        if not any(f"W9.{n}.total_s" in f for n in ns):
            continue
        cells = []
        for n in ns:
            k = f"W9.{n}."
            total = f.get(k + "total_s")
            cells.append(
                "-"
                if total is None
                else f"{total:.2f} s / {f[k + 'x_ideal']:.2f} / {f[k + 'p50_ms']:,.0f} / "
                f"{f[k + 'p99_ms']:,.0f} ms"
            )
        rows.append([p, *cells])
    header = ["peer", *(f"{n} callers: total / x ideal / p50 / p99" for n in ns)]
    return _md(header, rows) if rows else ""


PARENT_COST = (
    ("W1.parent_cpu_us", "parent CPU µs/call", "{:,.1f}"),
    ("W1.gc_objects_per_call", "GC-tracked objects/call", "{:,.2f}"),
    ("W1.gc_gen0", "gen-0 collections", "{:,.0f}"),
    ("W1.gc_gen1", "gen-1 collections", "{:,.0f}"),
    ("W1.gc_gen2", "gen-2 collections", "{:,.0f}"),
)


def parent_cost_table(table: Table, peers: list[str]) -> str:
    """W1's cost in the parent: CPU per call (all its threads), GC allocations, collections."""
    rows = [
        [p, *(_fmt(fmt, table[p].get(k)) for k, _label, fmt in PARENT_COST)]
        for p in peers
        if "W1.parent_cpu_us" in table.get(p, {})
    ]
    return _md(["peer", *(label for _k, label, _fmt in PARENT_COST)], rows) if rows else ""


def targets_table(targets: list[dict[str, Any]]) -> str:
    rows = []
    for t in targets:
        fmt = "{:,.3g}" if abs(t["value"] or 0) < 100 else "{:,.0f}"
        ratio = t["ratio"]
        verdict = t["verdict"]
        if ratio is not None:
            verdict += f": {ratio:.2f} x {t['ratio_to']} (needs {t['needed']})"
        rows.append([t["id"], t["target"], _fmt(fmt, t["value"]), _fmt(fmt, t["bound"]), verdict])
    return _md(["id", "target", "aioparallel", "bound", "verdict"], rows, text_cols=2)


def is_busy(data: dict[str, Any]) -> bool:
    """Whether the run says the machine was busy (its flag, or a note saying so)."""
    return bool(data.get("busy")) or any("busy" in n for n in data.get("notes", []))


def machine_text(data: dict[str, Any]) -> str:
    """The machine and versions line, and the warnings a reader must see first."""
    m = data["machine"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    lines = [
        f"**Machine**: {m['cpu']}, {m['cores_usable']} usable cores, {m['memory_gb']} GB, "
        f"{m['python']}, {m['platform']}; bare interpreter start "
        f"{m['interpreter_start_s']:.3f} s; run of {m['date']}, "
        f"`{data['sizes']['mode']}` sizes, {data['sizes']['rounds']} round(s).",
        "",
        f"**Versions**: {pkgs}.",
    ]
    if data["sizes"]["mode"] != "full":
        lines += [
            "",
            f"**Placeholder**: these figures come from a `--{data['sizes']['mode']}` run"
            " (sizes scaled down, verdicts indicative only); the full run on a quiet machine"
            " replaces them.",
        ]
    if is_busy(data):
        lines += [
            "",
            f"**Busy machine**: the 1-min load was {m['load_avg_1m_at_start']} when the run"
            " started; other processes competed for the cores, so the figures are noisy.",
        ]
    return "\n".join(lines)


def context(data: dict[str, Any]) -> dict[str, Any]:
    """What the verdicts need beyond the figures, from a run's JSON."""
    table: Table = data["figures"]
    sizes = data["sizes"]
    mb = next((f["W5.array_mb"] for f in table.values() if "W5.array_mb" in f), sizes["w5_mb"])
    return {"array_mb": mb, "w8_calls": sizes["w8_calls"]}


def sections(data: dict[str, Any]) -> dict[str, str]:
    """Every generated piece of a run's report, by name (the docs page's region names)."""
    table: Table = data["figures"]
    peers: list[str] = data["peers"]
    targets = verdicts(table, data["workloads"], **context(data))
    return {
        "machine": machine_text(data),
        "medians": medians_table(table, peers),
        "w9": w9_table(table, peers),
        "parent-cost": parent_cost_table(table, peers),
        "targets": targets_table(targets),
        "notes": "\n".join(f"- {n}" for n in data.get("notes", [])),
    }


def render(data: dict[str, Any]) -> str:
    """The whole report of a run, as Markdown for stdout (or an issue)."""
    s = sections(data)
    parts = [f"## aioparallel benchmarks ({data['sizes']['mode']})", s["machine"]]
    ratios = ratios_table(data["figures"], data["peers"])
    for title, body in (
        ("Medians", s["medians"]),
        (f"Ratio to {REFERENCE}", ratios),
        ("W9: concurrent requests (total s / x ideal / p50 / p99 ms per caller)", s["w9"]),
        ("Parent cost during W1", s["parent-cost"]),
        ("aioparallel against targets", s["targets"]),
        ("Notes", s["notes"]),
    ):
        if body:
            parts += ["", f"### {title}", body]
    return "\n".join(parts)


# --- the docs page: regions generated from the committed JSON ----------------------

_REGION = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S
)


def update_page(page: str, data: dict[str, Any]) -> str:
    """``page`` with every generated region rewritten from ``data``; prose is kept.

    A region the generator does not know, or a section the page has no region for, is
    an error: the page must show every table of the run, and nothing stale.
    """
    generated = sections(data)
    names = [m["name"] for m in _REGION.finditer(page)]
    unknown = sorted(set(names) - set(generated))
    missing = sorted(set(generated) - set(names))
    if unknown or missing:
        raise ValueError(f"page regions: unknown {unknown}, missing {missing}")

    def fill(m: re.Match[str]) -> str:
        body = generated[m["name"]]
        return f"{m[1]}{body}\n{m[4]}" if body else f"{m[1]}{m[4]}"

    return _REGION.sub(fill, page)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.report RUN.json [--docs PAGE.md [--check]] [--plot PNG]``."""
    ap = argparse.ArgumentParser(prog="benchmarks.report", description=main.__doc__)
    ap.add_argument("json", help="a run's JSON (benchmarks.run --json)")
    ap.add_argument("--docs", metavar="PAGE", help="rewrite the page's generated regions")
    ap.add_argument("--check", action="store_true", help="with --docs: exit 1 if out of date")
    ap.add_argument("--plot", metavar="PNG", help="write the ratio plot (matplotlib)")
    args = ap.parse_args(argv)
    data = json.loads(Path(args.json).read_text())
    if args.plot:
        plot(data["figures"], data["peers"], args.plot)
    if not args.docs:
        print(render(data))
        return 0
    page = Path(args.docs).read_text()
    new = update_page(page, data)
    if args.check:
        if new != page:
            print(f"{args.docs} is out of date: run without --check", file=sys.stderr)
            return 1
        return 0
    Path(args.docs).write_text(new)
    return 0


def plot(table: Table, peers: list[str], path: str) -> None:
    """One small panel per figure: each peer's value divided by joblib-loky's."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    from matplotlib.ticker import NullFormatter  # type: ignore[import-not-found, unused-ignore]

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


if __name__ == "__main__":
    sys.exit(main())
