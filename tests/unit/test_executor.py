"""Task executors against real child processes, real commands and real pipes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import cloudpickle
import psutil
import pytest

from tests.harness import assert_no_leaks, describe_pids, eventually, eventually_async
from xpipe import _codec
from xpipe._proto import common_pb2, worker_pb2
from xpipe.worker import _executor, _runtask
from xpipe.worker._executor import (
    ExecutorStartError,
    ProcessExecutor,
    make_executor,
)
from xpipe.worker._thread_executor import ThreadExecutor
from xpipe.worker._runtask import run_assignment

HELPERS = "tests.helpers_tasks"


@pytest.fixture(autouse=True)
def _no_leaked_children() -> Any:
    baseline = assert_no_leaks()
    yield
    leaked = assert_no_leaks(5.0, ignore=baseline)
    assert not leaked, f"test left child processes alive:\n{describe_pids(leaked)}"


# ---- building assignments --------------------------------------------------------

_attempts = iter(range(1, 1 << 30))


def assignment(
    *,
    call: str = "",
    code_hash: str = "",
    handler: str = "",
    argv: list[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: str = "",
    name: str = "t",
    args: common_pb2.Payload | None = None,
    depends_on: Sequence[tuple[str, Any]] = (),
    flows: Sequence[tuple[str, str, str, Any]] = (),
    timeout_s: float = 0.0,
    run_id: str = "run-1",
) -> worker_pb2.Assignment:
    """An Assignment as the coordinator would send it; upstream values are pickled."""
    a = worker_pb2.Assignment()
    a.attempt.run_id = run_id
    a.attempt.task = name
    a.attempt.attempt = next(_attempts)
    task = a.task
    task.name = name
    task.timeout_s = timeout_s
    if call or code_hash:
        task.python.import_path = call
        task.python.code_hash = code_hash
    elif handler:
        task.handler.name = handler
    else:
        task.command.argv.extend(argv or [])
        task.command.env.update(env or {})
        task.command.cwd = cwd
    if args is not None:
        task.args.CopyFrom(args)
    for source, value in depends_on:
        task.depends_on.append(source)
        a.upstream.append(value if isinstance(value, common_pb2.Payload) else _codec.encode(value))
    for source, key, parameter, value in flows:
        task.flows.add(source_task=source, key=key, parameter=parameter)
        a.upstream.append(value if isinstance(value, common_pb2.Payload) else _codec.encode(value))
    return a


def key_of(a: worker_pb2.Assignment) -> tuple[str, str, int]:
    return (a.attempt.run_id, a.attempt.task, a.attempt.attempt)


def value(event: worker_pb2.TaskEvent) -> Any:
    assert event.WhichOneof("kind") == "succeeded", event
    return _codec.decode(event.succeeded.result)


def error(event: worker_pb2.TaskEvent) -> common_pb2.TaskError:
    assert event.WhichOneof("kind") == "failed", event
    return event.failed.error


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def local(a: worker_pb2.Assignment, code: bytes | None = None, cache: dict | None = None) -> worker_pb2.TaskEvent:
    return run_assignment(a, code, {} if cache is None else cache)


def pickled(func: Callable[..., Any]) -> tuple[bytes, str]:
    data = cloudpickle.dumps(func)
    return data, hashlib.sha256(data).hexdigest()


# ---- run_assignment in this process: arguments and errors -------------------------


def test_import_path_call_gets_upstream_args_kwargs_and_flows() -> None:
    a = assignment(
        call=f"{HELPERS}:describe",
        depends_on=[("a", 1), ("b", "two")],
        args=_codec.encode(((3,), {"k": 4})),
        flows=[("c", "n", "m", {"n": 5, "other": 0}), ("d", "", "whole", [6])],
    )
    before = time.time()
    event = local(a)
    assert value(event) == {"args": [1, "two", 3], "kwargs": {"k": 4, "m": 5, "whole": [6]}}
    assert event.attempt == a.attempt
    assert before <= event.at <= time.time()


def test_json_args_are_accepted_for_python_calls() -> None:
    a = assignment(call=f"{HELPERS}:add", args=_codec.encode({"args": [1, 2], "kwargs": {"x": 3}}, "json"))
    event = local(a)
    assert value(event) == 6
    assert event.succeeded.result.codec == common_pb2.CODEC_PICKLE


def test_flow_key_missing_names_task_source_and_key() -> None:
    a = assignment(name="report", call=f"{HELPERS}:describe", flows=[("stats", "mean", "m", {"median": 1})])
    err = error(local(a))
    assert err.error_type == "TASK_FAILURE"
    assert "'report'" in err.message and "'stats'" in err.message and "'mean'" in err.message
    assert "median" in err.message  # the keys it does have


def test_flow_key_on_a_value_that_has_no_keys() -> None:
    a = assignment(call=f"{HELPERS}:describe", flows=[("count", "n", "m", 7)])
    err = error(local(a))
    assert err.error_type == "TASK_FAILURE" and "'n'" in err.message and "int" in err.message


def test_flow_parameter_also_given_as_keyword_fails() -> None:
    a = assignment(call=f"{HELPERS}:describe", args=_codec.encode(((), {"m": 1})), flows=[("s", "", "m", 2)])
    err = error(local(a))
    assert "parameter 'm'" in err.message and "'s'" in err.message


def test_upstream_count_mismatch_fails_clearly() -> None:
    a = assignment(call=f"{HELPERS}:add", depends_on=[("a", 1)])
    a.task.depends_on.append("b")
    err = error(local(a))
    assert "1 upstream payloads, expected 2" in err.message


@pytest.mark.parametrize(
    "args, fragment",
    [
        (_codec.encode([1, 2, 3]), "(args tuple, kwargs dict)"),
        (_codec.encode(((1,), [2])), "mapping of keyword arguments"),
        (_codec.encode(((), {1: 2})), "must be strings"),
        (_codec.encode({"args": [1], "extra": 2}, "json"), "'args' (array) and 'kwargs' (object)"),
        (_codec.encode([1], "json"), "'args' (array) and 'kwargs' (object)"),
        (common_pb2.Payload(codec=common_pb2.CODEC_PICKLE, data=b"not a pickle"), "cannot decode arguments"),
    ],
)
def test_malformed_arguments_fail_as_serialization(args: common_pb2.Payload, fragment: str) -> None:
    err = error(local(assignment(name="x", call=f"{HELPERS}:add", args=args)))
    assert err.error_type == "SERIALIZATION"
    assert fragment in err.message and "'x'" in err.message


def test_corrupt_upstream_names_the_upstream_task() -> None:
    bad = common_pb2.Payload(codec=common_pb2.CODEC_PICKLE, data=b"\x80\x05garbage")
    err = error(local(assignment(name="x", call=f"{HELPERS}:add", depends_on=[("load", bad)])))
    assert err.error_type == "SERIALIZATION" and "'load'" in err.message and "'x'" in err.message


def test_exception_becomes_failure_with_type_message_and_traceback() -> None:
    err = error(local(assignment(call=f"{HELPERS}:fail_with_value_error", args=_codec.encode((("boom",), {})))))
    assert (err.error_type, err.exception_type, err.message) == ("TASK_FAILURE", "ValueError", "boom")
    assert "fail_with_value_error" in err.traceback and "ValueError: boom" in err.traceback
    assert "_runtask.py" not in err.traceback  # starts in user code


def test_wrong_arguments_keep_the_whole_traceback() -> None:
    err = error(local(assignment(call=f"{HELPERS}:noop", depends_on=[("a", 1)])))
    assert err.exception_type == "TypeError" and "noop()" in err.message and err.traceback


def test_exception_error_type_attribute_is_used() -> None:
    err = error(local(assignment(call=f"{HELPERS}:fail_data_quality")))
    assert (err.error_type, err.exception_type) == ("DATA_QUALITY_FAILURE", "DataQualityError")


def test_sys_exit_in_a_task_is_a_task_failure() -> None:
    err = error(local(assignment(call=f"{HELPERS}:exit_via_sys_exit")))
    assert (err.error_type, err.exception_type, err.message) == ("TASK_FAILURE", "SystemExit", "4")


def test_unimportable_callable_fails_naming_the_path() -> None:
    err = error(local(assignment(name="x", call="tests.no_such_module:f")))
    assert err.error_type == "DEPENDENCY_FAILURE" and "tests.no_such_module" in err.message and "'x'" in err.message
    assert list(err.missing_dependencies) == ["tests.no_such_module"]


def test_unserialisable_result_fails_as_serialization() -> None:
    err = error(local(assignment(name="lock", call=f"{HELPERS}:unpicklable")))
    assert err.error_type == "SERIALIZATION" and "result of task 'lock'" in err.message


def test_internal_error_still_ends_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(assignment: Any, *rest: Any) -> Any:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(_runtask, "_call_arguments", broken)
    err = error(local(assignment(name="x", call=f"{HELPERS}:noop")))
    assert err.error_type == "TASK_FAILURE"
    assert err.message == "internal error running task 'x': RuntimeError: injected fault"
    assert "injected fault" in err.traceback


def test_import_path_callable_is_cached() -> None:
    cache: dict = {}
    assert value(local(assignment(call=f"{HELPERS}:noop"), cache=cache)) is None
    assert f"{HELPERS}:noop" in cache


def test_pickled_code_is_checked_against_its_hash_and_cached() -> None:
    data, digest = pickled(lambda x: x + 1)
    cache: dict = {}
    assert error(local(assignment(code_hash=digest))).error_type == "CODE_MISSING"
    err = error(local(assignment(code_hash="0" * 64), data))
    assert err.error_type == "SERIALIZATION" and "does not match its hash" in err.message
    assert value(local(assignment(code_hash=digest, depends_on=[("a", 1)]), data, cache)) == 2
    assert value(local(assignment(code_hash=digest, depends_on=[("a", 2)]), None, cache)) == 3


def test_corrupt_pickled_code_fails_as_serialization() -> None:
    data = b"not a pickle"
    err = error(local(assignment(code_hash=hashlib.sha256(data).hexdigest()), data))
    assert err.error_type == "SERIALIZATION" and "unpickle" in err.message


def test_task_with_nothing_to_run_fails() -> None:
    a = assignment(argv=["true"])
    a.task.ClearField("command")
    assert "nothing to run" in error(local(a)).message
    a.task.python.SetInParent()
    assert "names no callable" in error(local(a)).message


def test_handler_codec_follows_the_arguments() -> None:
    import tests.helpers_tasks  # noqa: F401 - registers "double"

    event = local(assignment(handler="double", args=_codec.encode({"args": [21]}, "json")))
    assert event.succeeded.result.codec == common_pb2.CODEC_JSON and value(event) == 42
    event = local(assignment(handler="double", args=_codec.encode((("ab",), {}))))
    assert event.succeeded.result.codec == common_pb2.CODEC_PICKLE and value(event) == "abab"


def test_unknown_handler_fails_naming_it() -> None:
    err = error(local(assignment(name="x", handler="no-such-handler")))
    assert err.error_type == "HANDLER_NOT_FOUND" and "'no-such-handler'" in err.message and "'x'" in err.message


# ---- commands ---------------------------------------------------------------------


def test_command_result_has_stdout_stderr_and_exit_code(tmp_path: Path) -> None:
    script = "import os, sys; print(os.environ['XP_VAR'], os.getcwd()); print('careful', file=sys.stderr)"
    event = local(assignment(argv=[sys.executable, "-c", script], env={"XP_VAR": "hello"}, cwd=str(tmp_path)))
    assert event.succeeded.result.codec == common_pb2.CODEC_JSON
    assert value(event) == {"stdout": f"hello {tmp_path}\n", "stderr": "careful\n", "exit_code": 0}


def test_command_nonzero_exit_reports_the_stderr_tail() -> None:
    script = "import sys; sys.stderr.write('x' * 5000 + 'THE END'); sys.exit(3)"
    err = error(local(assignment(argv=[sys.executable, "-c", script])))
    assert err.error_type == "TASK_FAILURE"
    assert err.message.startswith("command exited with code 3: ") and err.message.endswith("THE END")
    assert len(err.message) == len("command exited with code 3: ") + _runtask.COMMAND_STDERR_TAIL_CHARS


def test_command_output_that_is_not_utf8_is_replaced() -> None:
    script = "import sys; sys.stdout.buffer.write(b'ok \\xff')"
    assert value(local(assignment(argv=[sys.executable, "-c", script])))["stdout"] == "ok \ufffd"


@pytest.mark.parametrize(
    "argv, cwd, fragment",
    [
        (["xpipe-no-such-program-1234"], "", "executable 'xpipe-no-such-program-1234' not found"),
        (["true"], "/no/such/dir", "working directory '/no/such/dir' does not exist"),
        ([], "", "empty argv"),
        (["/etc/hostname"], "", "cannot start '/etc/hostname'"),
    ],
)
def test_command_that_cannot_start_fails_clearly(argv: list[str], cwd: str, fragment: str) -> None:
    err = error(local(assignment(name="cmd", argv=argv, cwd=cwd)))
    assert err.error_type == "TASK_FAILURE" and fragment in err.message and "'cmd'" in err.message


def test_command_refuses_extra_arguments() -> None:
    err = error(local(assignment(argv=["true"], args=_codec.encode(((1,), {})))))
    assert "takes no arguments" in err.message


def test_command_timeout_kills_its_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"sleep 30 & echo $! > {pid_file}; wait"
    started = time.monotonic()
    err = error(local(assignment(name="slow", argv=["sh", "-c", script], timeout_s=0.3)))
    assert (err.error_type, err.message) == ("TIMEOUT", "task 'slow' timed out after 0.3 s")
    assert time.monotonic() - started < 10
    grandchild = int(pid_file.read_text())
    eventually(lambda: gone(grandchild), timeout_s=5, message=f"process {grandchild} gone")


# ---- process executor -------------------------------------------------------------


def test_process_executor_runs_tasks_in_child_processes() -> None:
    async def main() -> None:
        async with ProcessExecutor(2, imports=[HELPERS]) as ex:
            pids = set(ex.pids)
            assert len(pids) == 2 and os.getpid() not in pids
            a = assignment(
                call=f"{HELPERS}:describe",
                depends_on=[("a", 1)],
                args=_codec.encode(((2,), {"k": 3})),
                flows=[("c", "n", "m", {"n": 4})],
            )
            event = await ex.run(a, None)
            assert value(event) == {"args": [1, 2], "kwargs": {"k": 3, "m": 4}}
            assert event.attempt == a.attempt
            child_pid = value(await ex.run(assignment(call=f"{HELPERS}:pid"), None))
            assert child_pid in pids
            for proc in map(psutil.Process, pids):  # session leaders, apart from the worker
                assert os.getsid(proc.pid) == proc.pid
            event = await ex.run(assignment(handler="double", args=_codec.encode({"args": [4]}, "json")), None)
            assert value(event) == 8 and event.succeeded.result.codec == common_pb2.CODEC_JSON

    run(main())


def test_process_executor_runs_concurrently_and_queues_beyond_slots() -> None:
    async def main() -> None:
        async with ProcessExecutor(2) as ex:
            tasks = [assignment(name=f"t{i}", call=f"{HELPERS}:pid") for i in range(6)]
            events = await asyncio.gather(*(ex.run(a, None) for a in tasks))
            assert {value(e) for e in events} <= set(ex.pids)
            assert [e.attempt.task for e in events] == [f"t{i}" for i in range(6)]

    run(main())


def test_pickled_code_is_sent_once_and_reused_from_the_child_cache() -> None:
    calls = [0]

    def counter() -> int:  # a closure, so cloudpickle ships it by value
        calls[0] += 1
        return calls[0]

    data, digest = pickled(counter)

    async def main() -> None:
        async with ProcessExecutor(1, imports=[HELPERS]) as ex:
            assert error(await ex.run(assignment(code_hash=digest), None)).error_type == "CODE_MISSING"
            assert value(await ex.run(assignment(code_hash=digest), data)) == 1
            # Same child, code not sent again: the cached function keeps its state.
            assert value(await ex.run(assignment(code_hash=digest), None)) == 2
            assert value(await ex.run(assignment(code_hash=digest), None)) == 3
            # A replacement child gets the code from the executor's store.
            assert error(await ex.run(assignment(call=f"{HELPERS}:crash"), None)).error_type == "TASK_FAILURE"
            assert value(await ex.run(assignment(code_hash=digest), None)) == 1

    run(main())


def test_pickled_code_refused() -> None:
    data, digest = pickled(lambda: 1)

    async def main(ex: Any) -> None:
        async with ex:
            err = error(await ex.run(assignment(name="lam", code_hash=digest), data))
            assert err.error_type == "PICKLED_CODE_REFUSED" and "'lam'" in err.message
            assert value(await ex.run(assignment(call=f"{HELPERS}:add"), None)) == 0

    run(main(ProcessExecutor(1, allow_pickled=False)))
    run(main(ThreadExecutor(1, allow_pickled=False)))


def test_exception_in_child_carries_the_traceback() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            err = error(await ex.run(assignment(call=f"{HELPERS}:fail_with_value_error"), None))
            assert (err.error_type, err.exception_type, err.message) == ("TASK_FAILURE", "ValueError", "bad value")
            assert "in fail_with_value_error" in err.traceback
            err = error(await ex.run(assignment(name="lock", call=f"{HELPERS}:unpicklable"), None))
            assert err.error_type == "SERIALIZATION" and "'lock'" in err.message

    run(main())


def test_commands_run_in_the_child() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            script = "import os; print(os.getppid())"
            out = value(await ex.run(assignment(argv=[sys.executable, "-c", script]), None))
            assert int(out["stdout"]) == ex.pids[0] and out["exit_code"] == 0
            err = error(await ex.run(assignment(argv=["sh", "-c", "echo oops >&2; exit 5"]), None))
            assert err.message == "command exited with code 5: oops\n"

    run(main())


def test_timeout_kills_the_child_and_its_processes_and_the_executor_recovers(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleeper"

    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            (old,) = ex.pids
            a = assignment(name="hang", call=f"{HELPERS}:spawn_then_sleep",
                           args=_codec.encode(((str(pid_file), 60), {})), timeout_s=0.5)
            started = time.monotonic()
            err = error(await ex.run(a, None))
            assert (err.error_type, err.message) == ("TIMEOUT", "task 'hang' timed out after 0.5 s")
            assert time.monotonic() - started < 5
            await eventually_async(lambda: gone(old), message="timed-out child gone")
            await eventually_async(lambda: gone(int(pid_file.read_text())), message="its background process gone")
            assert value(await ex.run(assignment(call=f"{HELPERS}:pid"), None)) != old

    run(main())


def test_command_timeout_in_the_child_keeps_the_child() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            (old,) = ex.pids
            err = error(await ex.run(assignment(name="c", argv=["sleep", "30"], timeout_s=0.3), None))
            assert (err.error_type, err.message) == ("TIMEOUT", "task 'c' timed out after 0.3 s")
            assert ex.pids == [old]

    run(main())


def test_crashing_child_fails_the_task_and_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            (old,) = ex.pids
            err = error(await ex.run(assignment(name="boom", call=f"{HELPERS}:crash",
                                                args=_codec.encode(((7,), {}))), None))
            assert err.error_type == "TASK_FAILURE"
            assert err.message == "executor process died with exit code 7 while running task 'boom'"
            assert value(await ex.run(assignment(call=f"{HELPERS}:pid"), None)) != old

    with caplog.at_level(logging.WARNING, logger=_executor.__name__):
        run(main())
    assert "died (exit code 7) while running task 'boom'" in caplog.text


def test_idle_child_killed_from_outside_is_replaced() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            (old,) = ex.pids
            os.kill(old, signal.SIGKILL)
            await eventually_async(lambda: ex.pids and ex.pids != [old], message="replacement child")
            assert value(await ex.run(assignment(call=f"{HELPERS}:pid"), None)) == ex.pids[0]

    run(main())


def test_child_dead_before_the_task_is_sent_fails_the_task() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            (old,) = ex.pids
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 5  # block the loop: the executor must not notice yet
            while not gone(old):
                assert time.monotonic() < deadline
                time.sleep(0.005)
            err = error(await ex.run(assignment(name="late", call=f"{HELPERS}:noop"), None))
            assert err.message == "executor process died with exit code -9 (SIGKILL) while running task 'late'"
            assert value(await ex.run(assignment(call=f"{HELPERS}:pid"), None)) != old

    run(main())


def test_malformed_answer_from_a_child_fails_the_task_and_replaces_it() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            (old,) = ex.pids
            err = error(await ex.run(assignment(name="scribble", call=f"{HELPERS}:scribble_on_pipe"), None))
            assert err.message == "executor process sent a malformed answer for task 'scribble'"
            assert value(await ex.run(assignment(call=f"{HELPERS}:pid"), None)) != old

    run(main())


def test_large_payloads_cross_the_pipe_both_ways() -> None:
    blob = os.urandom(3 * 1024 * 1024)  # incompressible, far above the socket buffer

    async def main() -> None:
        async with ProcessExecutor(2) as ex:
            events = await asyncio.gather(
                *(ex.run(assignment(call=f"{HELPERS}:echo", depends_on=[("a", blob)]), None) for _ in range(3))
            )
            assert all(value(e) == blob for e in events)

    run(main())


def test_cancel_running_and_queued_attempts() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            (old,) = ex.pids
            first = assignment(name="long", call=f"{HELPERS}:sleep", args=_codec.encode(((60,), {})))
            second = assignment(name="queued", call=f"{HELPERS}:noop")
            first_run = asyncio.ensure_future(ex.run(first, None))
            second_run = asyncio.ensure_future(ex.run(second, None))
            await eventually_async(lambda: key_of(second) in ex._queued, message="second queued")
            assert await ex.cancel(key_of(second)) is True
            err = error(await second_run)
            assert (err.error_type, err.message) == ("CANCELLED", "task 'queued' was cancelled before it started")
            assert await ex.cancel(key_of(first)) is True
            err = error(await first_run)
            assert (err.error_type, err.message) == ("CANCELLED", "task 'long' was cancelled")
            assert await ex.cancel(key_of(first)) is False
            assert await ex.cancel(("run-1", "nobody", 1)) is False
            await eventually_async(lambda: gone(old), message="cancelled child gone")
            assert value(await ex.run(assignment(call=f"{HELPERS}:pid"), None)) != old

    run(main())


def test_caller_giving_up_on_run_kills_the_child() -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            (old,) = ex.pids
            a = assignment(call=f"{HELPERS}:sleep", args=_codec.encode(((60,), {})))
            pending = asyncio.ensure_future(ex.run(a, None))
            await eventually_async(lambda: key_of(a) in ex._running, message="task running")
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            await eventually_async(lambda: gone(old), message="abandoned child gone")
            assert value(await ex.run(assignment(call=f"{HELPERS}:pid"), None)) != old

    run(main())


def test_stop_leaves_no_process_behind() -> None:
    async def main() -> None:
        ex = ProcessExecutor(2, imports=[HELPERS])
        await ex.start()
        pids = list(ex.pids)
        background = value(await ex.run(assignment(call=f"{HELPERS}:spawn_sleeper"), None))
        busy = [
            asyncio.ensure_future(ex.run(assignment(name=f"busy{i}", call=f"{HELPERS}:sleep",
                                                    args=_codec.encode(((60,), {}))), None))
            for i in range(2)
        ]
        queued = asyncio.ensure_future(ex.run(assignment(name="queued", call=f"{HELPERS}:noop"), None))
        await eventually_async(lambda: len(ex._queued) == 1 and len(ex._running) == 2, message="2 busy, 1 queued")
        await ex.stop(grace_s=0.0)
        # SIGKILL is delivered asynchronously: give the kernel a moment, never more than 5 s.
        for pid in [*pids, background]:
            await eventually_async(lambda pid=pid: gone(pid), message=f"process {pid} gone after stop()")
        for i, run_ in enumerate(busy):
            err = error(await run_)
            assert (err.error_type, err.message) == (
                "WORKER_LOST", f"executor stopped before task 'busy{i}' finished (grace period 0 s)")
        assert error(await queued).message == "executor stopped before task 'queued' started"
        with pytest.raises(RuntimeError, match="not running"):
            await ex.run(assignment(call=f"{HELPERS}:noop"), None)
        await ex.stop()  # idempotent
        with pytest.raises(RuntimeError, match="stopped"):
            await ex.start()

    run(main())


def test_stop_grace_lets_running_tasks_finish() -> None:
    async def main() -> None:
        ex = ProcessExecutor(1)
        await ex.start()
        running = asyncio.ensure_future(ex.run(assignment(call=f"{HELPERS}:sleep",
                                                          args=_codec.encode(((0.3,), {}))), None))
        await eventually_async(lambda: ex._running, message="task running")
        await asyncio.gather(ex.stop(grace_s=30), ex.stop(grace_s=30))
        assert value(await running) == 0.3
        assert not ex.pids

    run(main())


def test_run_misuse_raises() -> None:
    async def main() -> None:
        ex = ProcessExecutor(1)
        with pytest.raises(RuntimeError, match="not running"):
            await ex.run(assignment(call=f"{HELPERS}:noop"), None)
        async with ex:
            a = assignment(call=f"{HELPERS}:sleep", args=_codec.encode(((60,), {})))
            first = asyncio.ensure_future(ex.run(a, None))
            await eventually_async(lambda: ex._running, message="task running")
            with pytest.raises(ValueError, match="already running"):
                await ex.run(a, None)
            assert await ex.cancel(key_of(a))
            assert error(await first).error_type == "CANCELLED"

    run(main())
    with pytest.raises(ValueError, match="at least 1 slot"):
        ProcessExecutor(0)


def test_start_fails_on_a_bad_import_and_leaves_nothing_behind() -> None:
    async def main() -> None:
        ex = ProcessExecutor(2, imports=["xpipe_no_such_module_42"])
        with pytest.raises(ExecutorStartError, match="cannot import module 'xpipe_no_such_module_42'"):
            await ex.start()
        assert not ex.pids
        with pytest.raises(RuntimeError):
            await ex.run(assignment(call=f"{HELPERS}:noop"), None)

    run(main())


def test_start_times_out_on_a_hanging_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "xpipe_test_hanging_import.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    async def main() -> None:
        ex = ProcessExecutor(1, imports=["xpipe_test_hanging_import"], start_timeout_s=1.0)
        with pytest.raises(ExecutorStartError, match="did not start within 1 s"):
            await ex.start()

    run(main())


def test_failed_replacement_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "broken"
    (tmp_path / "xpipe_test_flaky_import.py").write_text(
        f"import pathlib\nif pathlib.Path({str(marker)!r}).exists():\n    raise ImportError('marker present')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    async def main() -> None:
        async with ProcessExecutor(1, imports=["xpipe_test_flaky_import"]) as ex:
            marker.touch()
            assert error(await ex.run(assignment(call=f"{HELPERS}:crash"), None)).error_type == "TASK_FAILURE"
            waiting = asyncio.ensure_future(ex.run(assignment(call=f"{HELPERS}:pid"), None))
            await eventually_async(lambda: "cannot replace an executor process" in caplog.text, message="failure log")
            assert not waiting.done()
            marker.unlink()
            assert value(await waiting) in ex.pids

    with caplog.at_level(logging.ERROR, logger=_executor.__name__):
        run(main())
    assert "marker present" in caplog.text


def test_process_start_failures_are_retried_or_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_popen = subprocess.Popen
    failures = [0]

    def failing_popen(*args: Any, **kwargs: Any) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable (injected)")
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(_executor.subprocess, "Popen", failing_popen)

    async def main() -> None:
        failures[0] = 1
        with pytest.raises(OSError, match="injected"):
            await ProcessExecutor(2).start()
        async with ProcessExecutor(1) as ex:
            (old,) = ex.pids
            failures[0] = 1
            assert error(await ex.run(assignment(call=f"{HELPERS}:crash"), None)).error_type == "TASK_FAILURE"
            assert value(await ex.run(assignment(call=f"{HELPERS}:pid"), None)) != old

    with caplog.at_level(logging.ERROR, logger=_executor.__name__):
        run(main())
    assert "cannot start an executor process (retrying in 0." in caplog.text


def test_child_exit_is_noticed_without_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented (injected)")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)

    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            (old,) = ex.pids
            err = error(await ex.run(assignment(name="c", call=f"{HELPERS}:crash"), None))
            assert err.message == "executor process died with exit code 3 while running task 'c'"
            assert value(await ex.run(assignment(call=f"{HELPERS}:pid"), None)) != old

    run(main())


def test_no_op_round_trip_overhead() -> None:
    """Reports the median no-op round trip; the bound only catches gross regressions."""

    async def main() -> float:
        async with ProcessExecutor(1) as ex:
            a = assignment(call=f"{HELPERS}:noop")
            samples = []
            for i in range(2000):
                a.attempt.attempt = i + 1
                started = time.perf_counter()
                event = await ex.run(a, None)
                samples.append(time.perf_counter() - started)
                assert event.WhichOneof("kind") == "succeeded"
            return statistics.median(samples) * 1e6

    median_us = run(main())
    print(f"process executor no-op round trip: median {median_us:.0f} us over 2000 runs")
    assert median_us < 2000


# ---- thread executor --------------------------------------------------------------


def test_thread_executor_runs_tasks_in_this_process() -> None:
    data, digest = pickled(lambda x: x * 10)

    async def main() -> None:
        async with ThreadExecutor(2, imports=[HELPERS]) as ex:
            assert value(await ex.run(assignment(call=f"{HELPERS}:pid"), None)) == os.getpid()
            assert value(await ex.run(assignment(code_hash=digest, depends_on=[("a", 2)]), data)) == 20
            assert value(await ex.run(assignment(code_hash=digest, depends_on=[("a", 3)]), None)) == 30
            assert error(await ex.run(assignment(code_hash="f" * 64), None)).error_type == "CODE_MISSING"
            event = await ex.run(assignment(handler="double", args=_codec.encode({"args": [1]}, "json")), None)
            assert value(event) == 2
            err = error(await ex.run(assignment(call=f"{HELPERS}:fail_with_value_error"), None))
            assert err.exception_type == "ValueError" and "fail_with_value_error" in err.traceback

    run(main())


def test_thread_executor_timeout_returns_at_once() -> None:
    async def main() -> None:
        async with ThreadExecutor(1) as ex:
            started = time.monotonic()
            a = assignment(name="slow", call=f"{HELPERS}:sleep", args=_codec.encode(((1.0,), {})), timeout_s=0.1)
            err = error(await ex.run(a, None))
            assert (err.error_type, err.message) == ("TIMEOUT", "task 'slow' timed out after 0.1 s")
            assert time.monotonic() - started < 0.8  # well before the 1 s sleep ends
            # The thread runs on, holding the only slot; the next task waits for it.
            assert value(await ex.run(assignment(call=f"{HELPERS}:add"), None)) == 0
            err = error(await ex.run(assignment(argv=["sleep", "30"], timeout_s=0.2), None))
            assert err.error_type == "TIMEOUT"

    run(main())


def test_thread_executor_cancel_and_stop() -> None:
    async def main() -> None:
        ex = ThreadExecutor(1)
        with pytest.raises(RuntimeError, match="not running"):
            await ex.run(assignment(call=f"{HELPERS}:noop"), None)
        await ex.start()
        running = assignment(name="r", call=f"{HELPERS}:sleep", args=_codec.encode(((0.5,), {})))
        queued = assignment(name="q", call=f"{HELPERS}:noop")
        queued2 = assignment(name="q2", call=f"{HELPERS}:noop")
        runs = [asyncio.ensure_future(ex.run(a, None)) for a in (running, queued, queued2)]
        await eventually_async(lambda: len(ex._running) == 3, message="all submitted")
        with pytest.raises(ValueError, match="already running"):
            await ex.run(queued, None)
        assert await ex.cancel(key_of(queued)) is True
        assert await ex.cancel(key_of(running)) is False  # a running thread cannot be stopped
        assert await ex.cancel(("x", "y", 1)) is False
        err = error(await runs[1])
        assert (err.error_type, err.message) == ("CANCELLED", "task 'q' was cancelled before it started")
        await ex.stop(grace_s=0)
        assert error(await runs[0]).message == "executor stopped before task 'r' finished"
        assert error(await runs[2]).message == "executor stopped before task 'q2' started"
        await ex.stop()
        with pytest.raises(RuntimeError, match="stopped"):
            await ex.start()

    run(main())


def test_thread_executor_bad_import() -> None:
    with pytest.raises(ExecutorStartError, match="cannot import module 'xpipe_no_such_module_42'"):
        run(ThreadExecutor(1, imports=["xpipe_no_such_module_42"]).start())


def test_make_executor() -> None:
    assert isinstance(make_executor("process", 2), ProcessExecutor)
    assert isinstance(make_executor("thread", 2, imports=[HELPERS]), ThreadExecutor)
    with pytest.raises(ValueError, match="unknown executor kind 'fiber'"):
        make_executor("fiber", 1)
    with pytest.raises(ValueError, match="at least 1 slot"):
        make_executor("thread", 0)


def test_refresh_imports_replaces_idle_children_now_and_busy_ones_after_their_task() -> None:
    """After a package install, every task that starts runs in an interpreter started after it."""

    async def main() -> None:
        async with ProcessExecutor(2) as ex:
            long = assignment(name="long", call=f"{HELPERS}:sleep", args=_codec.encode(((0.5,), {})))
            running = asyncio.ensure_future(ex.run(long, None))
            await eventually_async(lambda: key_of(long) in ex._running, message="task running")
            busy_pid = ex._running[key_of(long)].pid
            (idle_pid,) = set(ex.pids) - {busy_pid}
            ex.refresh_imports()
            await eventually_async(lambda: gone(idle_pid), message="the idle child replaced")
            assert busy_pid in ex.pids  # a running task is never cut short
            assert value(await running) == 0.5
            await eventually_async(lambda: gone(busy_pid) and len(ex.pids) == 2, message="the busy child replaced")
            for i in range(4):
                assert value(await ex.run(assignment(name=f"after{i}", call=f"{HELPERS}:pid"), None)) not in {
                    idle_pid, busy_pid}

    run(main())
