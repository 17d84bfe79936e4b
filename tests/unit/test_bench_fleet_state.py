"""The state-machine replay of the fleet bench (bench/fleet_state.py), at a small size."""

from __future__ import annotations

import pytest

from bench.fleet_state import main, replay


def test_replay_answers_every_task_once_and_batches_per_worker():
    few = replay(2, 400, 2)
    assert few["tasks"] == 400 and few["cpu_us_per_task"] > 0 and few["turns"] > 0
    # Two workers, each sent what its prefetch allows once it has learned the tasks are short.
    assert few["assignments_per_message"] > 10, few
    many = replay(100, 400, 10)
    # A hundred workers share the same tasks: at most 4 each, so far smaller batches.
    assert 1 <= many["assignments_per_message"] <= 4, many


def test_bad_arguments_are_refused_by_name(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        main(["--workers", "0"])
    assert exc.value.code == 2
    assert "--workers, --tasks and --repeats must be at least 1" in capsys.readouterr().err
