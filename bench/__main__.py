"""``python -m bench``: xpipe, Dask distributed and Ray side by side, in one run.

For every scenario the repeats rotate the order of the systems (xpipe, Dask, Ray; then
Dask, Ray, xpipe; ...), so a machine that slows down or speeds up during the run weighs on
all alike. Each sample runs on a fresh cluster. The table of medians, min-max and ratios is
printed, and the same data, raw samples included, is written as JSON under ``--out``.

Exit status: 0 when every measurement ran (goals missed or not), 1 when one failed (the
JSON then has the samples taken so far and an ``error``), 2 for bad arguments, 130 on
Ctrl-C and 143 on SIGTERM (clusters stopped, partial JSON written).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import functools
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import _dask, _profile, _ray, _xpipe
from bench._report import (
    FULL, METRICS, QUICK, SCENARIO_NOTES, format_table, machine_info, source_info, summarise, write_json,
)  # fmt: skip

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SCENARIO_NAMES = tuple(METRICS)


def _scenario_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIO_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {unknown or [text]}; choose from {', '.join(SCENARIO_NAMES)}"
        )
    return list(dict.fromkeys(names))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and 1 repeat: a smoke check (CI)")
    p.add_argument("--repeats", type=_positive_int, help="samples per system and scenario (default 3; 1 with --quick)")
    p.add_argument("--scenarios", type=_scenario_list, default=list(SCENARIO_NAMES),
                   help=f"comma-separated subset of: {','.join(SCENARIO_NAMES)}")  # fmt: skip
    p.add_argument("--no-dask", action="store_true", help="leave Dask out")
    p.add_argument("--no-ray", action="store_true", help="leave Ray out")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory for the JSON (default {DEFAULT_OUT})")
    p.add_argument("--timeout-s", type=_positive_float, help="longest one measured run may take (default 900)")
    p.add_argument("--dask-bigdag-full", action="store_true",
                   help="also run Dask and Ray on the big layered DAG (Dask: minutes at 100k tasks); "
                   "default: the small one only")  # fmt: skip
    p.add_argument("--profile", action="store_true",
                   help="after each scenario, one extra unmeasured xpipe run under py-spy (coordinator and w0)")  # fmt: skip
    p.add_argument("--workdir", type=Path, help="where clusters keep their temporary data (default: system temp)")
    p.add_argument("--telemetry", action="store_true",
                   help="xpipe with metrics on and traces at default sampling, sent to a local OTLP sink")  # fmt: skip
    p.add_argument("--security", action="store_true",
                   help="xpipe with mTLS (certificates from xpipe certs) and --auth tokens: on every process")
    return p


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _brief(sample: dict[str, Any], scenario: str) -> str:
    parts = []
    for metric in METRICS[scenario]:
        if metric.key in sample:
            parts.append(f"{metric.label}={sample[metric.key]:.4g}")
    return ", ".join(parts)


class _Runner:
    """Runs the selected scenarios and collects everything the JSON holds."""

    def __init__(self, opts: argparse.Namespace, argv: Sequence[str]):
        self.opts = opts
        sizes = QUICK if opts.quick else FULL
        overrides: dict[str, Any] = {"dask_bigdag_full": opts.dask_bigdag_full}
        if opts.timeout_s is not None:
            overrides["timeout_s"] = opts.timeout_s
        self.sizes = dataclasses.replace(sizes, **overrides)
        self.repeats = opts.repeats or (1 if opts.quick else 3)
        xpipe_session = functools.partial(_xpipe.open_session, telemetry=opts.telemetry, security=opts.security)
        self.systems: dict[str, tuple[Callable[..., Any], dict[str, Callable[..., dict]]]] = {
            "xpipe": (xpipe_session, _xpipe.SCENARIOS)
        }
        self.skipped: dict[str, str] = {}
        for name, module, left_out in (("dask", _dask, opts.no_dask), ("ray", _ray, opts.no_ray)):
            if left_out:
                self.skipped[name] = f"--no-{name}"
            elif (why := module.available()) is not None:
                self.skipped[name] = why
            else:
                self.systems[name] = (module.open_session, module.SCENARIOS)
        self.started = _dt.datetime.now(_dt.timezone.utc)
        self.stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        self.document: dict[str, Any] = {
            "schema": 2,  # 2: ratio_dask and ratio_ray replace ratio
            "timestamp": self.started.isoformat(timespec="seconds"),
            "mode": "quick" if opts.quick else "full",
            "argv": list(argv),
            "machine": machine_info(),
            "xpipe_source": source_info(Path(__file__).resolve().parent.parent),
            "repeats": self.repeats,
            "telemetry": opts.telemetry,
            "security": opts.security,
            "sizes": dataclasses.asdict(self.sizes),
            "systems": {name: "measured" for name in self.systems}
            | {name: f"skipped: {why}" for name, why in self.skipped.items()},
            "scenarios": {},
            "profiles": {},
            "error": None,
        }

    def _order(self, repeat: int) -> list[str]:
        """The systems rotated by one per repeat: over N repeats each takes each position alike."""
        names = list(self.systems)
        shift = repeat % len(names)
        return names[shift:] + names[:shift]

    def run(self) -> int:
        code = 0
        where = "start"
        try:
            for scenario in self.opts.scenarios:
                entry = self.document["scenarios"].setdefault(
                    scenario, {"note": SCENARIO_NOTES[scenario], "samples": {name: [] for name in self.systems}}
                )
                for repeat in range(self.repeats):
                    for position, system in enumerate(self._order(repeat)):
                        where = f"{scenario} / {system} / repeat {repeat + 1}"
                        _log(f"[bench] {where} ...")
                        sample = self._sample(system, scenario)
                        sample.update(repeat=repeat, position=position)
                        entry["samples"][system].append(sample)
                        _log(f"[bench] {where}: {_brief(sample, scenario)}")
                if self.opts.profile:
                    where = f"{scenario} / xpipe / profile"
                    self._profile(scenario)
        except KeyboardInterrupt:
            self.document["error"] = f"interrupted during {where}"
            code = 130
        except _Terminated as exc:
            self.document["error"] = f"terminated by {signal.Signals(exc.signum).name} during {where}"
            code = 128 + exc.signum
        except Exception as exc:  # noqa: BLE001 - recorded, reported, and turned into the exit status
            self.document["error"] = f"{where}: {type(exc).__name__}: {exc}"
            code = 1
        finally:
            self._finish()
        return code

    def _sample(self, system: str, scenario: str) -> dict[str, Any]:
        open_session, scenarios = self.systems[system]
        with open_session(self.opts.workdir) as session:
            started = time.perf_counter()
            sample = scenarios[scenario](session, self.sizes)
            sample["wall_s"] = time.perf_counter() - started
        return sample

    def _profile(self, scenario: str) -> None:
        why = _profile.can_profile()
        if why is not None:
            self.document["profiles"][scenario] = {"skipped": why}
            _log(f"[bench] profile skipped: {why}")
            return
        stem = f"{self.stamp}-profile-{scenario}"
        with _xpipe.open_session(self.opts.workdir, telemetry=self.opts.telemetry,
                                 security=self.opts.security) as cluster:  # fmt: skip
            targets = {"coordinator": (cluster.coordinator_pid, False), "worker": (cluster.worker_pids()[0], True)}
            with _profile.profiling(targets, self.opts.out, stem) as paths:
                meter = _profile.CpuMeter(cluster.process_roles())
                _xpipe.SCENARIOS[scenario](cluster, self.sizes)
                usage = meter.stop()
        self.document["profiles"][scenario] = {
            "cpu": usage,
            **{name: {"file": str(path), **_profile.read_profile(path)} for name, path in paths.items()},
        }

    def _finish(self) -> None:
        for scenario, entry in self.document["scenarios"].items():
            entry["summary"] = summarise(scenario, entry["samples"])
        self.document["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        path = write_json(self.opts.out, self.document, mode=self.document["mode"], stamp=self.stamp)
        print(format_table(self.document["scenarios"]))
        for name, why in self.skipped.items():
            print(f"{name}: skipped ({why})")
        for scenario, entry in self.document["scenarios"].items():
            print(f"{scenario}: {entry['note']}")
        for scenario, profiles in self.document["profiles"].items():
            if "cpu" in profiles:
                print(_profile.format_cpu(f"profile {scenario}", profiles["cpu"]))
            for name, summary in profiles.items():
                if isinstance(summary, dict) and "samples" in summary:
                    print(_profile.format_top(f"profile {scenario} / {name}", summary))
        if self.document["error"]:
            print(f"ERROR: {self.document['error']}")
        print(f"results: {path}")


class _Terminated(BaseException):
    """Raised by the SIGTERM handler: a BaseException, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Unwind like Ctrl-C, so every cluster's finally block stops its processes and the
    # samples taken so far are still written, marked with the reason.
    raise _Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return _Runner(opts, argv).run()


if __name__ == "__main__":
    sys.exit(main())
