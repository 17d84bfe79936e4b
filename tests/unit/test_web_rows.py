"""The dashboard's pure helpers: critical path and counts (coordinator/_web/_rows.py)."""

from __future__ import annotations

from xpipe.coordinator._web._rows import counts_of, critical_path


def test_critical_path_follows_the_longest_durations():
    # a -> b -> d and a -> c -> d: c is slower than b, so the path goes through c.
    names = ["a", "b", "c", "d"]
    deps = [[], [0], [0], [1, 2]]
    started = [10.0, 11.0, 11.0, 15.0]
    finished = [11.0, 12.0, 15.0, 16.0]
    path, seconds = critical_path(names, deps, started, finished, now=100.0)
    assert path == ["a", "c", "d"] and seconds == 6.0


def test_critical_path_counts_running_tasks_up_to_now_and_unstarted_as_zero():
    names = ["a", "b", "c"]
    deps = [[], [0], [0]]
    started = [0.0, 1.0, 0.0]  # b runs, c has not started
    finished = [0.0, 0.0, 0.0]
    path, seconds = critical_path(names, deps, started, finished, now=4.0)
    assert path == ["a", "b"] and seconds == 3.0
    assert critical_path([], [], [], [], now=1.0) == ([], 0.0)


def test_counts_name_the_states():
    assert counts_of([5, 5, 6, 1]) == {"SUCCEEDED": 2, "FAILED": 1, "PENDING": 1}


def test_critical_path_of_a_run_without_edges_is_its_longest_task():
    names = ["a", "b", "c", "d"]
    started = [10.0, 10.0, 0.0, 11.0]  # c never started
    finished = [12.0, 0.0, 0.0, 12.5]  # b still running
    path, seconds = critical_path(names, [[], [], [], []], started, finished, now=15.0)
    assert path == ["b"] and seconds == 5.0
    # The same answer as the general walk, given an edge that does not change it.
    general, general_s = critical_path([*names, "e"], [[], [], [], [], [0]], [*started, 0.0], [*finished, 0.0], now=15.0)
    assert general == ["b"] and general_s == seconds
