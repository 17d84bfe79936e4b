"""Sizes, metrics and goals of the benchmark, and turning raw samples into a table and JSON.

Every sample is kept raw in the JSON (round-trip latencies included), so a reader can
recompute any statistic; the table shows the median and min-max over repeats, and the
xpipe/Dask and xpipe/Ray ratios of the medians. Goals are set against Dask.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "BenchError",
    "Sizes",
    "FULL",
    "QUICK",
    "Metric",
    "METRICS",
    "SYSTEMS",
    "percentile",
    "summarise",
    "machine_info",
    "source_info",
    "format_table",
    "write_json",
]

SYSTEMS = ("xpipe", "dask", "ray")
"""Every system the bench knows, in table order; xpipe first, the others are compared with it."""


class BenchError(RuntimeError):
    """A benchmark could not measure: a cluster did not start, a run failed or answered wrong."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each scenario is."""

    wide: int
    """Independent no-op tasks in the wide scenario."""
    chain: int
    """Tasks in the chain, each depending on the previous one."""
    fanin: int
    """Leaf tasks feeding the one reducer."""
    roundtrip: int
    """Single-task pipelines submitted and awaited one after the other."""
    bigdag: int
    """Tasks in the big layered DAG (xpipe; Dask and Ray too with ``dask_bigdag_full``)."""
    bigdag_small: int
    """The smaller layered DAG the big one's per-task time is compared with; Dask and Ray run it."""
    bigdag_width: int
    """Tasks per layer in both layered DAGs."""
    payload_pairs: int
    """Producer -> consumer pairs in the payload scenario."""
    payload_bytes: int
    """Bytes each producer returns."""
    timeout_s: float = 900.0
    """Longest one measured run may take before the benchmark gives up on it."""
    dask_bigdag_full: bool = False
    """Also run Dask and Ray on the big layered DAG (Dask: minutes at 100k tasks)."""


FULL = Sizes(
    wide=10_000, chain=2_000, fanin=5_000, roundtrip=500, bigdag=100_000, bigdag_small=10_000, bigdag_width=1_000,
    payload_pairs=32, payload_bytes=2**20,
)  # fmt: skip
QUICK = Sizes(
    wide=500, chain=100, fanin=200, roundtrip=30, bigdag=5_000, bigdag_small=500, bigdag_width=250,
    payload_pairs=4, payload_bytes=2**20,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the table."""

    key: str
    """Key in a sample dict."""
    label: str
    higher_is_better: bool
    goal_ratio: float | None = None
    """xpipe/Dask ratio to reach: at least this if higher is better, else at most this."""
    goal_xpipe: float | None = None
    """Bound on xpipe's own median: at least this if higher is better, else at most this."""


METRICS: dict[str, list[Metric]] = {
    "wide": [Metric("tasks_per_s", "tasks/s", True, goal_ratio=10.0)],
    "chain": [Metric("tasks_per_s", "tasks/s", True, goal_ratio=3.0)],
    "fanin": [Metric("tasks_per_s", "tasks/s", True)],
    "roundtrip": [
        Metric("median_ms", "median ms", False, goal_ratio=0.2),
        Metric("p99_ms", "p99 ms", False),
    ],
    "bigdag": [
        Metric("small_submit_s", "small DAG: submit s", False),
        Metric("small_tasks_per_s", "small DAG: tasks/s after submit", True),
        Metric("small_peak_rss_mib", "small DAG: scheduler peak RSS MiB", False),
        Metric("build_s", "big DAG: build spec s", False),
        Metric("submit_s", "big DAG: submit s", False),
        Metric("tasks_per_s", "big DAG: tasks/s after submit", True),
        Metric("peak_rss_mib", "big DAG: scheduler peak RSS MiB", False, goal_xpipe=1024.0),
        Metric("scaling_ratio", "per-task time big/small", False, goal_xpipe=1.5),
    ],
    "payload": [
        Metric("mb_per_s_compressible", "MB/s, compressible (zstd shrinks)", True),
        Metric("mb_per_s_random", "MB/s, random bytes (zstd cannot shrink)", True),
    ],
}

SCENARIO_NOTES = {
    "wide": "N independent no-op tasks: one pipeline (xpipe) vs client.map + gather (Dask) vs ray.get "
    "on a list of refs (Ray)",
    "chain": "N tasks each taking the previous result",
    "fanin": "N tasks plus one reducer taking all N results",
    "roundtrip": "a single-task pipeline (xpipe) / a single submit().result() (Dask) / a single "
    "ray.get(f.remote()) (Ray), in sequence",
    "bigdag": "layered DAG, each task waits for 2 of the layer above; Dask and Ray run only the small size "
    "unless --dask-bigdag-full; Dask's scheduler and Ray's owner (the driver) share the benchmark's own "
    "process, so their RSS includes the client (Ray's raylet and GCS are not counted); Ray submits while "
    "it builds, so its submit s is the whole submission",
    "payload": "producers return 1 MiB each to a consumer, and one task sums the lengths received; xpipe "
    "zstd-compresses values >= 16 KiB by default, so the without-zstd case uses incompressible random bytes "
    "(which xpipe keeps raw once zstd saves nothing) and the with-zstd case a repeating pattern; Dask's "
    "comm compression is off by default; Ray passes values of 100 KiB or more through its shared-memory "
    "object store, uncompressed",
}


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile with linear interpolation (numpy's default method).

    Raises:
        ValueError: ``values`` is empty or ``pct`` is outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(scenario: str, samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Rows for one scenario: per metric, each system's median/min/max, the ratios, the goal.

    ``ratio_dask`` and ``ratio_ray`` are xpipe's median over the other's (None when either
    has no sample); goals are judged on ``ratio_dask``.
    """
    rows = []
    for metric in METRICS[scenario]:
        row: dict[str, Any] = {"metric": metric.key, "label": metric.label, "higher_is_better": metric.higher_is_better}
        for system in SYSTEMS:
            row[system] = _stats([s[metric.key] for s in samples.get(system, ()) if metric.key in s])
        x = row["xpipe"]
        for other in SYSTEMS[1:]:
            o = row[other]
            row[f"ratio_{other}"] = x["median"] / o["median"] if x and o and o["median"] else None
        row["goal"], row["met"] = _goal(metric, x, row["ratio_dask"])
        rows.append(row)
    return rows


def _goal(metric: Metric, xpipe: dict[str, float] | None, ratio: float | None) -> tuple[str | None, bool | None]:
    """The goal as text and whether it is met (None: no goal, or nothing to judge it by)."""
    if metric.goal_ratio is not None:
        sign = ">=" if metric.higher_is_better else "<="
        text = f"xpipe/Dask {sign} {metric.goal_ratio:g}"
        if ratio is None:
            return text, None
        return text, ratio >= metric.goal_ratio if metric.higher_is_better else ratio <= metric.goal_ratio
    if metric.goal_xpipe is not None:
        sign = ">=" if metric.higher_is_better else "<"
        text = f"xpipe {sign} {metric.goal_xpipe:g}"
        if xpipe is None:
            return text, None
        value = xpipe["max"] if not metric.higher_is_better else xpipe["min"]  # the worst repeat must pass
        return text, value >= metric.goal_xpipe if metric.higher_is_better else value < metric.goal_xpipe
    return None, None


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _cell(stats: dict[str, float] | None) -> str:
    if stats is None:
        return "-"
    if stats["n"] == 1:
        return _num(stats["median"])
    return f"{_num(stats['median'])} [{_num(stats['min'])}-{_num(stats['max'])}]"


def format_table(scenarios: Mapping[str, Mapping[str, Any]], *, markdown: bool = False) -> str:
    """The results table: median [min-max] per system, xpipe/Dask and xpipe/Ray, goal and whether met."""
    header = ["scenario", "metric", "xpipe", "Dask", "Ray", "vs Dask", "vs Ray", "goal", "met"]
    lines = []
    for name, data in scenarios.items():
        for row in data.get("summary", ()):
            ratios = [f"{r:.2f}x" if (r := row.get(f"ratio_{o}")) is not None else "-" for o in SYSTEMS[1:]]
            met = {True: "yes", False: "NO", None: "-"}[row["met"]] if row["goal"] else ""
            cells = [_cell(row.get(system)) for system in SYSTEMS]
            lines.append([name, row["label"], *cells, *ratios, row["goal"] or "", met])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def source_info(repo: Path) -> dict[str, Any]:
    """Which xpipe was measured: the git commit and whether the working tree had edits."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": None if status is None else bool(status)}


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, so runs on different machines are not compared blindly."""
    import psutil

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "versions": {
            dist: _version(dist)
            for dist in (
                "xpipe-cluster", "dask", "distributed", "ray",
                "grpcio", "protobuf", "zstandard", "psutil", "uvloop",
            )  # fmt: skip
        },
    }


def write_json(out_dir: Path, document: Mapping[str, Any], *, mode: str, stamp: str | None = None) -> Path:
    """Write ``document`` as ``out_dir/<stamp>-<mode>.json`` and return the path.

    ``stamp`` defaults to the current UTC time; the runner passes its start time, which
    also names the run's profile files, so they sort together.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = stamp or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{stamp}-{mode}.json"
    n = 1
    while path.exists():
        path = out_dir / f"{stamp}-{mode}.{n}.json"
        n += 1
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=False, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot put {type(value).__name__} into the results JSON")


def dag_timings(n: int, start: float, built: float, submitted: float, done: float, peak_bytes: int) -> dict[str, Any]:
    """One layered-DAG sample, the same keys for every system (times from ``perf_counter``)."""
    return {
        "tasks": n,
        "build_s": built - start,
        "submit_s": submitted - built,
        "run_s": done - submitted,
        "total_s": done - start,
        "tasks_per_s": n / (done - submitted),
        "per_task_us": (done - start) / n * 1e6,
        "peak_rss_bytes": peak_bytes,
        "peak_rss_mib": peak_bytes / 2**20,
    }


def peer_bigdag(once: Any, sizes: Sizes) -> dict[str, Any]:
    """A peer's layered DAG: the small size, and the big one with ``dask_bigdag_full``.

    ``once(sampler, n)`` runs one DAG of ``n`` tasks and returns :func:`dag_timings`; the RSS
    sampled is this process's, where Dask's scheduler and Ray's driver live.
    """
    from bench._xpipe import RssSampler

    sampler = RssSampler(os.getpid()).start()
    try:
        small = once(sampler, sizes.bigdag_small)
        big = once(sampler, sizes.bigdag) if sizes.dask_bigdag_full else None
    finally:
        sampler.stop()
    sample = {f"small_{k}": v for k, v in small.items()}
    if big is not None:
        sample.update(big, scaling_ratio=big["per_task_us"] / small["per_task_us"])
    return sample


def check_answer(got: Any, expected: Any, what: str) -> None:
    """Fail loudly when a run returned the wrong answer: a wrong run is not a fast run."""
    if got != expected:
        raise BenchError(f"{what}: expected {expected!r}, got {got!r}")


def latency_sample(latencies_ms: list[float]) -> dict[str, Any]:
    """One round-trip sample, the same keys for every system."""
    return {
        "count": len(latencies_ms),
        "median_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "latencies_ms": latencies_ms,
    }


def payload_sample(once: Any, sizes: Sizes) -> dict[str, Any]:
    """MB/s with compressible payloads and random ones; ``once(compressible)`` gives one figure."""
    return {
        "pairs": sizes.payload_pairs,
        "payload_bytes": sizes.payload_bytes,
        "mb_per_s_compressible": once(True),
        "mb_per_s_random": once(False),
    }
