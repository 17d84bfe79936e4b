"""Tasks stay inside their limits, on a real ProcessExecutor: memory (RLIMIT_DATA) and output."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tests.unit.test_executor import _no_leaked_children, error, run, value  # noqa: F401 - the fixture is autouse
from xpipe import _codec
from xpipe._proto import worker_pb2
from xpipe.worker._executor import ExecutorStartError, ProcessExecutor
from xpipe.worker._thread_executor import ThreadExecutor
from xpipe.worker._task_limits import TASK_OUTPUT_TAIL_BYTES, TailBuffer, format_bytes

MIB = 2**20
LIMITS = "tests.helpers_limits"
_attempts = iter(range(1, 1 << 30))


def assignment(name: str, *, call: str = "", argv: list[str] | None = None, args: tuple = (),
               memory_bytes: int = 0) -> worker_pb2.Assignment:  # fmt: skip
    a = worker_pb2.Assignment()
    a.attempt.run_id, a.attempt.task, a.attempt.attempt = "run-1", name, next(_attempts)
    a.task.name = name
    if call:
        a.task.python.import_path = call
        if args:
            a.task.args.CopyFrom(_codec.encode((args, {})))
    else:
        a.task.command.argv.extend(argv or [])
    a.task.resources.memory_bytes = memory_bytes
    return a




def test_a_task_over_its_declared_memory_fails_and_the_next_task_runs() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            assert ex.memory_enforcement == "rlimit"
            pid = ex.pids[0]
            hog = await ex.run(assignment("hog", call=f"{LIMITS}:allocate", args=(1024 * MIB,), memory_bytes=100 * MIB), None)
            err = error(hog)
            assert err.error_type == "RESOURCE_EXHAUSTION" and err.non_retryable
            assert "memory limit of 100 MiB (declared by the task)" in err.message
            assert "peak resident memory" in err.message and err.exception_type == "MemoryError"
            assert err.required_resources.memory_bytes == 100 * MIB
            # The same warm child runs the next task, with its own (larger) limit and without one.
            fits = await ex.run(assignment("fits", call=f"{LIMITS}:allocate", args=(64 * MIB,), memory_bytes=100 * MIB), None)
            assert value(fits) == 64 * MIB
            free = await ex.run(assignment("free", call=f"{LIMITS}:allocate", args=(256 * MIB,)), None)
            assert value(free) == 256 * MIB
            assert ex.pids == [pid]

    run(main())


def test_the_worker_default_applies_to_tasks_that_declare_none() -> None:
    async def main() -> None:
        async with ProcessExecutor(1, memory_limit_bytes=64 * MIB) as ex:
            err = error(await ex.run(assignment("hog", call=f"{LIMITS}:allocate", args=(512 * MIB,)), None))
            assert err.error_type == "RESOURCE_EXHAUSTION"
            assert "memory limit of 64 MiB (the worker's --task-memory-limit)" in err.message
            # A declared limit wins over the default, upwards too.
            big = assignment("big", call=f"{LIMITS}:allocate", args=(128 * MIB,), memory_bytes=256 * MIB)
            assert value(await ex.run(big, None)) == 128 * MIB

    run(main())


def test_a_command_gets_the_limit_too() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            argv = [sys.executable, "-c", "x = bytearray(1 << 30); print(len(x))"]
            err = error(await ex.run(assignment("cmd_hog", argv=argv, memory_bytes=100 * MIB), None))
            assert err.error_type == "RESOURCE_EXHAUSTION" and err.non_retryable
            assert "memory limit of 100 MiB" in err.message and "MemoryError" in err.message
            ok = await ex.run(assignment("cmd_ok", argv=[sys.executable, "-c", "print(len(bytearray(1 << 24)))"],
                                         memory_bytes=100 * MIB), None)  # fmt: skip
            assert value(ok)["stdout"].strip() == str(1 << 24)

    run(main())


def test_output_is_captured_per_attempt_and_attached_to_a_failure() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            lots = await ex.run(assignment("lots", call=f"{LIMITS}:print_lots", args=(3 * MIB,)), None)
            assert value(lots) == 3 * MIB
            err = error(await ex.run(assignment("bad", call=f"{LIMITS}:fail_after_output", args=("hello",)), None))
            # Only this attempt's output: nothing of the 3 MiB before it.
            assert err.output.stdout_tail == b"out: hello\n" and err.output.stderr_tail.startswith(b"err: hello\n")
            assert err.output.stdout_bytes == len(b"out: hello\n")

    run(main())


def test_a_failed_attempt_keeps_only_the_last_bytes_of_its_output() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            script = "import sys; sys.stdout.write('a' * 1000000 + 'LAST'); sys.exit(1)"
            err = error(await ex.run(assignment("loud", call="", argv=[sys.executable, "-c", script]), None))
            assert err.output.stdout_bytes == 1000004 and len(err.output.stdout_tail) == TASK_OUTPUT_TAIL_BYTES
            assert err.output.stdout_tail.endswith(b"LAST")

    run(main())


def test_a_command_result_keeps_the_tail_and_says_how_much_was_dropped() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            script = "import sys; sys.stdout.write('a' * 1000000 + 'LAST')"
            out = value(await ex.run(assignment("loud", argv=[sys.executable, "-c", script]), None))
            assert len(out["stdout"]) == TASK_OUTPUT_TAIL_BYTES and out["stdout"].endswith("LAST")
            assert out["dropped_bytes"] == {"stdout": 1000004 - TASK_OUTPUT_TAIL_BYTES, "stderr": 0}

    run(main())


def test_thread_executor_says_it_does_not_enforce(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with ThreadExecutor(1, memory_limit_bytes=64 * MIB) as ex:
            assert ex.memory_enforcement == "none"

    run(main())
    assert "memory limits are NOT enforced (--task-memory-limit 64 MiB ignored)" in caplog.text


def test_tail_buffer_keeps_the_last_bytes() -> None:
    tail = TailBuffer(10)
    for chunk in (b"0123", b"456789ab", b"c" * 3, b"Z" * 25, b"end"):
        tail.append(chunk)
    assert tail.tail() == b"ZZZZZZZend" and tail.total_bytes == 43 and tail.dropped_bytes == 33
    assert format_bytes(100 * MIB) == "100 MiB" and format_bytes(1536) == "1.5 KiB"


def test_a_child_dying_under_a_limit_says_the_limit_was_in_force() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            err = error(await ex.run(assignment("dies", call="tests.helpers_tasks:crash", memory_bytes=100 * MIB), None))
            assert err.error_type == "TASK_FAILURE"
            assert "died with exit code 3" in err.message and "under a memory limit of 100 MiB" in err.message
            ok = await ex.run(assignment("next", call=f"{LIMITS}:allocate", args=(16 * MIB,)), None)
            assert value(ok) == 16 * MIB  # a fresh child took its place

    run(main())


def test_a_child_that_dies_at_start_up_shows_its_stderr(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dies_on_import.py").write_text(
        "import os, sys\nsys.stderr.write('cannot find libfoo.so\\n'); sys.stderr.flush(); os._exit(7)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    async def main() -> None:
        ex = ProcessExecutor(1, imports=["dies_on_import"])
        with pytest.raises(ExecutorStartError, match=r"exit code 7\).*its stderr ends: cannot find libfoo.so"):
            await ex.start()

    run(main())
