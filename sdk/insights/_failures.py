"""Failure prediction: the probability that a task's next attempt fails, from its history.

Per task, the rate of attempts that failed, smoothed with Laplace's rule (a Beta(1, 1)
prior: one imagined failure and one imagined success), so a task seen twice is not called
certain, and one never seen failing is not called infallible. Each run's attempts count
with weight ``0.5 ** (age / HALF_LIFE_RUNS)``, its age being how many newer runs of the
pipeline there are, so a task fixed ten runs ago is judged mostly by what it did since::

    p = (1 + sum(w * failed_attempts)) / (2 + sum(w * attempts))

A task's failed attempts are its retries (attempts after a failure), plus its last
attempt when it ended FAILED. Tasks that never ran (skipped, upstream failed) add nothing.
"""

from __future__ import annotations

from collections import defaultdict

from ._history import History

__all__ = ["HALF_LIFE_RUNS", "failure_probabilities"]

#: A run this many runs older than the newest counts half as much.
HALF_LIFE_RUNS = 10.0
_PRIOR_FAILURES = 1.0
_PRIOR_ATTEMPTS = 2.0


def failure_probabilities(history: History) -> dict[str, float]:
    """Task -> the smoothed, recency-weighted probability that an attempt of it fails.

    Keys are task names when the history holds one pipeline, else ``"<pipeline>/<task>"``.
    """
    pipelines = {run.pipeline for run in history.runs}
    failed: dict[str, float] = defaultdict(float)
    attempts: dict[str, float] = defaultdict(float)
    age: dict[str, int] = defaultdict(int)
    for run in sorted(history.runs, key=lambda r: (r.created_at, r.run_id), reverse=True):
        weight = 0.5 ** (age[run.pipeline] / HALF_LIFE_RUNS)
        age[run.pipeline] += 1
        for task in run.tasks:
            if task.attempts <= 0:
                continue
            key = task.name if len(pipelines) == 1 else f"{run.pipeline}/{task.name}"
            failures = task.attempts if task.state == "FAILED" else min(task.retries, task.attempts)
            failed[key] += weight * failures
            attempts[key] += weight * task.attempts
    return {
        key: (_PRIOR_FAILURES + failed[key]) / (_PRIOR_ATTEMPTS + attempts[key]) for key in sorted(attempts)
    }
