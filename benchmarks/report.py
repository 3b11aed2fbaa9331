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
    #: which medians table: "speed" (time and latency) or "memory" (memory and loop lag)
    group: str = "speed"


COLUMNS = (
    Column("W1.calls_per_s", "W1 calls/s", True, "{:,.0f}"),
    Column("W2.speedup", "W2 speedup", True, "{:.2f}"),
    Column("W3.p50_us", "W3 p50 µs", False, "{:,.0f}"),
    Column("W3.p99_us", "W3 p99 µs", False, "{:,.0f}"),
    Column("W4.seconds", "W4 cold s", False, "{:.3f}"),
    Column("W8.seconds", "W8 async s", False, "{:.3f}"),
    Column("W5.seconds", "W5 s", False, "{:.3f}", "memory"),
    Column("W5.extra_mb", "W5 RSS +MB", False, "{:,.0f}", "memory"),
    Column("W5.shm_mb", "W5 tmpfs +MB", False, "{:,.0f}", "memory"),
    Column("W6.p99_ms", "W6 lag p99 ms (median)", False, "{:,.1f}", "memory"),
    Column("W6.max_ms", "W6 lag max ms (all rounds)", False, "{:,.1f}", "memory"),
    Column("W7.parent_mb", "W7 parent +MB", False, "{:,.1f}", "memory"),
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
#: an alternative (its W3 "latency" is a function call), and raw-pipe is W3's floor.
NOT_A_PEER = ("aioparallel", "sequential", "raw-pipe")
#: W3's floor: a pickled call and its reply over a pipe between two warm processes.
RAW_PIPE = "raw-pipe"
#: W8's shape, for its ideal: per-worker concurrency of both aioparallel and aiomultiprocess.
W8_CONCURRENCY = 16
N_JOBS = 2
#: W9: the total at every N within this factor of the ideal (the calls' CPU / 2).
W9_X_IDEAL = 1.1
#: W10: a small request's p99 latency beside the huge one, over its time alone.
W10_SMALL_X_ALONE = 3.0
#: W10: the huge request's total over (its time alone + the small requests' CPU / 2).
W10_HUGE_X_BOUND = 1.1


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


def _digits(x: float, bound: float, met: bool, higher: bool, least: int = 2) -> str:
    """``x`` with enough decimals that, read as printed, it gives the verdict it got:
    a ratio of 1.997 against ">= 2" prints as 1.997, not as a "2.00" that looks met."""
    for d in range(least, 10):
        text = f"{x:,.{d}f}"
        shown = float(text.replace(",", ""))
        if (shown >= bound if higher else shown <= bound) == met:
            return text
    return repr(x)


def _pair(fmt: str, value: float | None, bound: float | None) -> tuple[str, str]:
    """``value`` and ``bound`` as the targets table prints them; if they differ but would
    print alike (400 and 400.06), with the decimals that tell them apart."""
    vs, bs = _fmt(fmt, value), _fmt(fmt, bound)
    if vs == bs and value is not None and bound is not None and value != bound:
        for d in range(10):
            vs, bs = f"{value:,.{d}f}", f"{bound:,.{d}f}"
            if vs != bs:
                break
    return vs, bs


def verdict_text(row: dict[str, Any]) -> str:
    """``met``/``MISS``/``n/a``, and for a judged ratio the figures that decide it, e.g.
    ``MISS: 1.997 x joblib-loky (needs >= 2)``."""
    text: str = row["verdict"]
    ratio = row["ratio"]
    if ratio is not None and text != "n/a":
        needed = row["needed"]
        higher = needed.startswith(">=")
        factor = float(needed.split()[1])
        shown = _digits(ratio, factor, text == "met", higher)
        text += f": {shown} x {row['ratio_to']} (needs {needed})"
    return text


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
    row = {
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
    row["text"] = verdict_text(row)
    return row


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
        rows.append(
            _row("W3", "p50 <= 3 x the raw-pipe floor", k, ours.get(k), peer(RAW_PIPE, k),
                 RAW_PIPE, 3.0)
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
        rows.append(
            _row("W5", "tmpfs growth <= 1.0 x array (in whole pages)", k, ours.get(k), array_mb,
                 "array")
        )  # fmt: skip
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
                _row("W9", f"{n} callers: total <= {W9_X_IDEAL:g} x ideal", k + "x_ideal",
                     ours.get(k + "x_ideal"), 1.0, "ideal", W9_X_IDEAL)
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
    if "W10" in wids:
        k = "W10.small_p99_x_alone"
        rows.append(
            _row("W10", f"small p99 <= {W10_SMALL_X_ALONE:g} x alone", k, ours.get(k), 1.0,
                 "alone", W10_SMALL_X_ALONE)
        )  # fmt: skip
        k = "W10.huge_x_bound"
        rows.append(
            _row("W10", f"huge <= {W10_HUGE_X_BOUND:g} x (alone + small work / 2)", k,
                 ours.get(k), 1.0, "(alone + small work / 2)", W10_HUGE_X_BOUND)
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


def medians_table(table: Table, peers: list[str], group: str = "speed") -> str:
    """The medians of one group of columns (a row per peer that has any of them)."""
    cols = [
        c for c in COLUMNS if c.group == group and any(c.key in table.get(p, {}) for p in peers)
    ]
    if not cols:  # e.g. a run of W9 alone
        return ""
    return _md(
        ["peer", *(c.label for c in cols)],
        [
            [p, *(_fmt(c.fmt, table.get(p, {}).get(c.key)) for c in cols)]
            for p in peers
            if any(c.key in table.get(p, {}) for c in cols)
        ],
    )


def ratios_table(table: Table, peers: list[str], group: str = "speed") -> str:
    """Each figure divided by joblib-loky's (empty when joblib-loky did not run)."""
    ref = table.get(REFERENCE, {})
    cols = [c for c in COLUMNS if c.group == group and ref.get(c.key)]
    rows = []
    for p in peers:
        if not any(c.key in table.get(p, {}) for c in cols):
            continue
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


#: W10's columns: (key, label, format).
W10_COLUMNS = (
    ("W10.small_alone_ms", "small alone ms", "{:,.0f}"),
    ("W10.small_p50_ms", "small p50 ms", "{:,.0f}"),
    ("W10.small_p99_ms", "small p99 ms", "{:,.0f}"),
    ("W10.small_p50_x_alone", "small p50 / alone", "{:.2f}"),
    ("W10.small_p99_x_alone", "small p99 / alone", "{:.2f}"),
    ("W10.huge_alone_s", "huge alone s", "{:.2f}"),
    ("W10.huge_s", "huge s", "{:.2f}"),
    ("W10.huge_x_alone", "huge / alone", "{:.2f}"),
    ("W10.huge_x_bound", "huge / (alone + small CPU / 2)", "{:.3f}"),
)
#: What the page shows where a run has no W10 figures (a run from before W10 existed).
W10_NA = "n/a: this run has no W10 figures (it predates W10, or W10 was not selected)."


def _fixed_table(
    table: Table, peers: list[str], columns: tuple[tuple[str, str, str], ...], present: str
) -> str:
    """A row per peer that has the ``present`` figure, a column per (key, label, format)."""
    rows = [
        [p, *(_fmt(fmt, table[p].get(k)) for k, _label, fmt in columns)]
        for p in peers
        if present in table.get(p, {})
    ]
    return _md(["peer", *(label for _k, label, _f in columns)], rows) if rows else ""


def w10_table(table: Table, peers: list[str]) -> str:
    """W10: a row per peer with the small requests' latency and the huge one's total."""
    return _fixed_table(table, peers, W10_COLUMNS, "W10.huge_s")


PARENT_COST = (
    ("W1.parent_cpu_us", "parent CPU µs/call", "{:,.1f}"),
    ("W1.gc_objects_per_call", "GC-tracked objects/call", "{:,.2f}"),
    ("W1.gc_gen0", "gen-0 collections", "{:,.0f}"),
    ("W1.gc_gen1", "gen-1 collections", "{:,.0f}"),
    ("W1.gc_gen2", "gen-2 collections", "{:,.0f}"),
)


def parent_cost_table(table: Table, peers: list[str]) -> str:
    """W1's cost in the parent: CPU per call (all its threads), GC allocations, collections."""
    return _fixed_table(table, peers, PARENT_COST, "W1.parent_cpu_us")


def targets_table(targets: list[dict[str, Any]]) -> str:
    rows = []
    for t in targets:
        fmt = "{:,.3g}" if abs(t["value"] or 0) < 100 else "{:,.0f}"
        value, bound = _pair(fmt, t["value"], t["bound"])
        rows.append([t["id"], t["target"], value, bound, verdict_text(t)])
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
    # tmpfs stores a file in whole pages: the array's bound is its size in pages (runs
    # before 2026-12-06 recorded its bytes only)
    mb = next(
        (
            f.get("W5.array_pages_mb", f["W5.array_mb"])
            for f in table.values()
            if "W5.array_mb" in f
        ),
        sizes["w5_mb"],
    )
    return {"array_mb": mb, "w8_calls": sizes["w8_calls"]}


def sections(data: dict[str, Any]) -> dict[str, str]:
    """Every generated piece of a run's report, by name (the docs page's region names)."""
    table: Table = data["figures"]
    peers: list[str] = data["peers"]
    targets = verdicts(table, data["workloads"], **context(data))
    return {
        "machine": machine_text(data),
        "medians": medians_table(table, peers, "speed"),
        "medians-memory": medians_table(table, peers, "memory"),
        "w9": w9_table(table, peers),
        "w10": w10_table(table, peers) or W10_NA,
        "parent-cost": parent_cost_table(table, peers),
        "targets": targets_table(targets),
        "notes": "\n".join(f"- {n}" for n in data.get("notes", [])),
    }


def render(data: dict[str, Any]) -> str:
    """The whole report of a run, as Markdown for stdout (or an issue)."""
    s = sections(data)
    parts = [f"## aioparallel benchmarks ({data['sizes']['mode']})", s["machine"]]
    for title, body in (
        ("Medians: time and latency", s["medians"]),
        (f"Ratio to {REFERENCE}", ratios_table(data["figures"], data["peers"], "speed")),
        ("Medians: memory and loop lag", s["medians-memory"]),
        (f"Ratio to {REFERENCE}", ratios_table(data["figures"], data["peers"], "memory")),
        ("W9: concurrent requests (total s / x ideal / p50 / p99 ms per caller)", s["w9"]),
        ("W10: small requests beside a huge one", s["w10"] if "W10" in data["workloads"] else ""),
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


#: The pictures the docs page leads with, written beside ``--plot PATH`` as
#: ``<stem>-<suffix>.png``: (suffix, what it shows).
FIGURES = (
    ("w9", "W9: a web backend, total and median latency against callers"),
    ("w10", "W10: small requests beside a huge one"),
    ("w1-w6", "W1 throughput and W6 loop lag"),
)
#: Size and resolution of each picture: legible at the docs page's ~700 px width.
FIGSIZE = (7.0, 4.2)
DPI = 150
FONT_PT = 10
OURS_COLOR = "tab:red"


def figure_paths(path: str) -> dict[str, Path]:
    """Where ``plot(..., path)`` writes each picture: ``path`` itself is the overview."""
    base = Path(path)
    return {suffix: base.with_name(f"{base.stem}-{suffix}{base.suffix}") for suffix, _ in FIGURES}


def plot(table: Table, peers: list[str], path: str) -> list[Path]:
    """Write the overview (each figure divided by joblib-loky's) at ``path`` and the
    pictures of ``FIGURES`` beside it; returns the paths written."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    plt.rcParams.update({"font.size": FONT_PT, "axes.titlesize": FONT_PT + 1})
    paths = figure_paths(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for suffix, draw in (("w9", _plot_w9), ("w10", _plot_w10), ("w1-w6", _plot_w1_w6)):
        fig = draw(plt, table, peers)
        fig.savefig(paths[suffix], dpi=DPI)
        plt.close(fig)
    _plot_overview(plt, table, peers, path)
    return [Path(path), *paths.values()]


def _colors(peers: list[str]) -> dict[str, Any]:
    """One colour per peer, the same in every picture; aioparallel's is red."""
    others = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:olive"]
    out: dict[str, Any] = {}
    for i, p in enumerate(q for q in peers if q != "aioparallel"):
        out[p] = others[i % len(others)]
    out["aioparallel"] = OURS_COLOR
    return out


def _no_data(plt: Any, what: str) -> Any:
    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    ax.axis("off")
    ax.text(0.5, 0.5, f"{what}: n/a (not in this run)", ha="center", va="center")
    return fig


def _plot_w9(plt: Any, table: Table, peers: list[str]) -> Any:
    """Total and p50 latency against callers, a line per peer, and the ideal total."""
    ns = w9_callers(table)
    shown = [p for p in peers if any(f"W9.{n}.total_s" in table.get(p, {}) for n in ns)]
    if not shown:
        return _no_data(plt, "W9")
    colors = _colors(peers)
    fig, (left, right) = plt.subplots(1, 2, figsize=FIGSIZE, sharey=True, layout="constrained")
    for ax, fig_key, title, scale in (
        (left, "total_s", "total (all callers served)", 1.0),
        (right, "p50_ms", "median caller's latency", 1e-3),
    ):
        for p in shown:
            f = table[p]
            pts = [(n, f[f"W9.{n}.{fig_key}"] * scale) for n in ns if f"W9.{n}.{fig_key}" in f]
            ours = p == "aioparallel"
            ax.plot(*zip(*pts, strict=True), marker="o", color=colors[p], label=p,
                    linewidth=2.5 if ours else 1.3, zorder=3 if ours else 2)  # fmt: skip
        ideal = [(n, _w9_ideal(table, n)) for n in ns]
        ideal = [(n, v) for n, v in ideal if v is not None]
        if ideal:
            ax.plot(*zip(*ideal, strict=True), linestyle="--", color="black",
                    label="ideal total (calls' CPU / 2)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("concurrent callers")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    left.set_ylabel("seconds (log)")
    left.legend(fontsize=FONT_PT - 1, loc="upper left", frameon=False)
    fig.suptitle("W9: N callers, each a map of 20 x 1 ms (lower is better)")
    return fig


def _w9_ideal(table: Table, n: int) -> float | None:
    """The ideal total at ``n`` callers, from aioparallel's run (its calls' CPU / 2),
    else the median over peers; runs before ``ideal_s`` derive it from ``x_ideal``."""
    values = []
    for p in ["aioparallel", *(q for q in table if q != "aioparallel")]:
        f = table[p]
        k = f"W9.{n}."
        if k + "ideal_s" in f:
            values.append(f[k + "ideal_s"])
        elif f.get(k + "x_ideal"):
            values.append(f[k + "total_s"] / f[k + "x_ideal"])
        if values and p == "aioparallel":
            return values[0]
    return statistics.median(values) if values else None


def _plot_w10(plt: Any, table: Table, peers: list[str]) -> Any:
    """Per peer: small p50 and p99 over alone, huge over alone, with the targets."""
    shown = [p for p in peers if "W10.huge_s" in table.get(p, {})]
    if not shown:
        return _no_data(plt, "W10")
    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    bars = (
        ("W10.small_p50_x_alone", "small p50 / alone", "tab:blue"),
        ("W10.small_p99_x_alone", "small p99 / alone", "tab:orange"),
        ("W10.huge_x_alone", "huge / alone", "tab:gray"),
    )
    width = 0.8 / len(bars)
    for b, (key, label, color) in enumerate(bars):
        xs = [i + (b - 1) * width for i in range(len(shown))]
        vals = [table[p].get(key, math.nan) for p in shown]
        drawn = ax.bar(xs, vals, width, label=label, color=color)
        ax.bar_label(drawn, fmt="%.1f", fontsize=FONT_PT - 2, padding=1)
    ax.axhline(W10_SMALL_X_ALONE, color="tab:orange", linestyle="--", linewidth=1.2,
               label=f"target: small p99 <= {W10_SMALL_X_ALONE:g} x alone")  # fmt: skip
    marks = []
    for i, p in enumerate(shown):
        f = table[p]
        if f.get("W10.huge_x_bound") and f.get("W10.huge_x_alone"):
            bound_over_alone = W10_HUGE_X_BOUND * f["W10.huge_x_alone"] / f["W10.huge_x_bound"]
            marks.append((i + width, bound_over_alone))
    if marks:
        ax.scatter(*zip(*marks, strict=True), marker="_", s=500, color="black", zorder=3,
                   label="target: huge <= 1.1 x (alone + small CPU / 2)")  # fmt: skip
    ax.set_xticks(range(len(shown)), shown, rotation=15)
    for tick in ax.get_xticklabels():
        if tick.get_text() == "aioparallel":
            tick.set_color(OURS_COLOR)
            tick.set_fontweight("bold")
    ax.set_ylabel("time / time alone (lower is better)")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.margins(y=0.12)
    ax.legend(fontsize=FONT_PT - 1, ncols=2, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)  # fmt: skip
    fig.suptitle("W10: small requests arriving during a huge one")
    return fig


def _plot_w1_w6(plt: Any, table: Table, peers: list[str]) -> Any:
    """W1 calls/s and W6 loop lag (p99, max), a row per peer, targets marked."""
    keys = ("W1.calls_per_s", "W6.max_ms")
    shown = [
        p for p in peers if p not in NOT_A_PEER[1:] and any(k in table.get(p, {}) for k in keys)
    ]
    if not shown:
        return _no_data(plt, "W1 and W6")
    fig, (left, right) = plt.subplots(1, 2, figsize=FIGSIZE, sharey=True, layout="constrained")
    ys = range(len(shown))
    vals = [table[p].get("W1.calls_per_s", math.nan) for p in shown]
    drawn = left.barh(ys, vals, color=[OURS_COLOR if p == "aioparallel" else "tab:gray"
                                       for p in shown])  # fmt: skip
    left.bar_label(drawn, labels=[_si(v) for v in vals], fontsize=FONT_PT - 1, padding=2)
    ref = table.get(REFERENCE, {}).get("W1.calls_per_s")
    if ref:
        left.axvline(2 * ref, color="black", linestyle="--", linewidth=1.2,
                     label=f"target: 2 x {REFERENCE}")  # fmt: skip
    left.set_xscale("log")
    left.minorticks_off()
    left.margins(x=0.35)
    left.set_title("W1: calls/s (higher is better)")
    h = 0.4
    for off, (key, label, color, target) in enumerate((
        ("W6.p99_ms", "p99", "tab:blue", 5.0),
        ("W6.max_ms", "max", "tab:orange", 20.0),
    )):  # fmt: skip
        lag = [max(table[p].get(key, math.nan), 0.1) for p in shown]
        right.barh([y + (off - 0.5) * h for y in ys], lag, h, color=color, label=f"lag {label}")
        right.axvline(target, color=color, linestyle="--", linewidth=1.2,
                      label=f"target: {label} <= {target:g} ms")  # fmt: skip
    right.set_xscale("log")
    right.minorticks_off()
    right.set_title("W6: loop lag, ms (lower is better)")
    left.set_yticks(list(ys), shown)
    left.invert_yaxis()
    for tick in left.get_yticklabels():
        if tick.get_text() == "aioparallel":
            tick.set_color(OURS_COLOR)
            tick.set_fontweight("bold")
    fig.legend(
        *_merged_legend(left, right), loc="outside lower center", ncols=3,
        fontsize=FONT_PT - 1, frameon=False,
    )  # fmt: skip
    return fig


def _merged_legend(*axes: Any) -> tuple[list[Any], list[str]]:
    handles: list[Any] = []
    labels: list[str] = []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    return handles, labels


def _si(v: float) -> str:
    return f"{v / 1e6:.2g}M" if v >= 1e6 else f"{v / 1e3:.3g}k" if v >= 1e3 else f"{v:.3g}"


def _plot_overview(plt: Any, table: Table, peers: list[str], path: str) -> None:
    """One panel per figure: each peer's value divided by joblib-loky's (a full-size
    picture the page links to, not one it shows inline)."""
    from matplotlib.ticker import NullFormatter  # type: ignore[import-not-found, unused-ignore]

    ref = table.get(REFERENCE, {})
    cols = [c for c in COLUMNS if ref.get(c.key)]
    ncols = 3
    nrows = max(1, math.ceil(len(cols) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(cols) :]:
        ax.set_visible(False)
    for ax, col in zip(axes.flat, cols, strict=False):
        names = [p for p in peers if table.get(p, {}).get(col.key) is not None]
        ratios = [max(table[p][col.key] / ref[col.key], 1e-3) for p in names]
        colors = [OURS_COLOR if p == "aioparallel" else "tab:gray" for p in names]
        bars = ax.barh(names, ratios, color=colors)
        ax.bar_label(bars, fmt="%.3g", fontsize=FONT_PT - 1, padding=2)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.25)
        ax.invert_yaxis()
        better = "higher" if col.higher_is_better else "lower"
        ax.set_title(f"{col.label}\n(÷ {REFERENCE}; {better} is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
