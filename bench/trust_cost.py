"""Per-task CPU cost of code trust (issue 13), measured without the network.

Not the full bench (``python -m bench``): a micro-benchmark of the code paths code trust
touches, best of N repeats, so the code can be compared with the code before it (run this
file against either tree; parts the older tree lacks are skipped).

- ``coordinator``: a wide run of 10,000 no-op tasks through the state machine and the
  engine's dispatch (``SchedulerState.handle``/``schedule`` + ``Engine._dispatch``), its
  spec carrying a signed run principal that every assignment then carries.
- ``assignment_bytes``: building one assignment's bytes.
- ``worker parent``: what the worker's parent does per assignment before an executor gets
  it: parse the ``AssignmentHead`` and (with code trust) check it at the gate.
- ``sign`` (once per run) and ``verify`` (once per run on each worker, then cached).

Run: ``python -m bench.trust_cost [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import time

from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.coordinator._engine import EngineConfig, assignment_bytes
from xpipe.coordinator._events import Assign

from bench._enginewide import TASKS, run_wide, wide_engine, wide_spec

try:  # code trust (absent in the tree before it)
    from xpipe.coordinator._trust import RunSigner
    from xpipe.security._codetrust import PrincipalVerifier
    from xpipe.worker._codegate import CodeGate
except ImportError:
    RunSigner = PrincipalVerifier = CodeGate = None  # type: ignore[assignment,misc]



def _signer():
    return RunSigner.generate() if RunSigner is not None else None


def wide_run_s(signer) -> float:
    """Seconds of CPU the coordinator's core spends on a wide run of TASKS no-op tasks."""
    engine = wide_engine(EngineConfig(signer=signer) if signer is not None else EngineConfig())
    spec = wide_spec()

    def sign() -> None:  # what Engine.submit does, once per run
        if signer is not None:
            spec.principal.CopyFrom(signer.sign("local", ("code:command", "code:pickle"), "r1"))

    started = time.process_time()
    run_wide(engine, spec, before=sign)
    return time.process_time() - started


def _assign(signer) -> Assign:
    task = pb.TaskSpec(name="t1")
    task.python.import_path = "bench.tasks:noop"
    extra = {}
    if signer is not None:
        principal = signer.sign("local", ("code:command", "code:pickle"), "r1")
        extra["principal"] = worker_pb2.Assignment(principal=principal).SerializeToString()
    return Assign("w0", ("r1", "t1", 1), task, (), **extra)


def best(fn, n: int, repeat: int) -> float:
    """Best per-call seconds over ``repeat`` batches of ``n`` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - started) / n)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args(argv)
    signer = _signer()
    runs = [wide_run_s(signer) for _ in range(opts.repeat)]
    print(f"coordinator wide run of {TASKS} tasks: {min(runs) * 1e6 / TASKS:.2f} µs/task (best of {opts.repeat})")
    action = _assign(signer)
    print(f"assignment_bytes: {best(lambda: assignment_bytes(action), 20000, opts.repeat) * 1e6:.2f} µs")
    encoded = assignment_bytes(action)
    parse = worker_pb2.AssignmentHead.FromString
    if CodeGate is None:
        print(f"worker parent per assignment (parse head): {best(lambda: parse(encoded), 20000, opts.repeat) * 1e6:.2f} µs")
        return
    gate = CodeGate()
    gate.trust(signer.public_key, signer.key_id)
    print(f"worker parent per assignment (parse head + gate): "
          f"{best(lambda: gate.check(parse(encoded)), 20000, opts.repeat) * 1e6:.2f} µs")  # fmt: skip
    fresh = RunSigner.generate  # a new signer has signed nothing: its first signature is the real cost
    print(f"sign a principal (once per principal and key): "
          f"{best(lambda: fresh().sign('local', ('code:pickle',), 'r1'), 500, opts.repeat) * 1e6:.1f} µs "
          f"(key generation included); a signed one again: "
          f"{best(lambda: signer.sign('local', ('code:pickle',), 'r2'), 5000, opts.repeat) * 1e6:.1f} µs")  # fmt: skip
    principal = signer.sign("local", ("code:pickle",), "r1")
    print(f"verify a principal (once per principal per worker): "
          f"{best(lambda: PrincipalVerifier(signer.public_key, signer.key_id).grants(principal, 'r1'), 500, opts.repeat) * 1e6:.1f} µs")  # fmt: skip


if __name__ == "__main__":
    main()
