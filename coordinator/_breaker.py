"""Circuit breakers: stop sending work at a dependency that keeps failing.

A run with ``circuit_breaker_enabled`` asks its circuit before each attempt. A circuit
is named by the task (``"<pipeline>/<task>"``) or by the dependency it calls (the Task
option ``circuit="payments-api"``), so several tasks, in several runs, can share one.
Pure like the state machine that owns it: no clock, ``now`` is passed in.

States::

    CLOSED --(threshold failures within window_s)--> OPEN
    OPEN --(open_s passed; the next allow() is the probe)--> HALF_OPEN
    HALF_OPEN --(probe succeeds)--> CLOSED
    HALF_OPEN --(probe fails)--> OPEN (for another open_s)

While OPEN, and while a HALF_OPEN probe is out, ``allow`` says no: the attempt fails fast
with ``CIRCUIT_OPEN`` instead of loading a dependency that is down. A probe whose outcome
never comes (its worker was lost, its run cancelled) is given up after ``open_s`` and
another probe is let through, so a circuit never stays half-open for good.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

__all__ = ["CircuitBreakers", "CircuitSnapshot", "CLOSED", "OPEN", "HALF_OPEN"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitSnapshot(NamedTuple):
    """One circuit as operators see it: ``(name, state, failures, opened_at)``."""

    name: str
    state: str
    """``closed``, ``open`` or ``half_open``."""
    failures: int
    """Failures counted in the current window (closed) or that opened it (open, half-open)."""
    opened_at: float
    """When it last opened (unix seconds); 0 if it never did."""


class _Circuit:
    __slots__ = ("state", "failures", "opened_at", "probe_at", "threshold", "window_s", "open_s")

    def __init__(self, threshold: int, window_s: float, open_s: float):
        self.state = CLOSED
        self.failures: deque[float] = deque()  # times of recent failures, oldest first
        self.opened_at = 0.0
        self.probe_at = 0.0  # when the HALF_OPEN probe was let through; 0: none out
        self.threshold = threshold
        self.window_s = window_s
        self.open_s = open_s


def _check(threshold: int, window_s: float, open_s: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"circuit threshold must be an int >= 1, got {threshold!r}")
    for name, value in (("window_s", window_s), ("open_s", open_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"circuit {name} must be a finite number of seconds > 0, got {value!r}")


class CircuitBreakers:
    """Every circuit a coordinator knows, keyed by name; unknown names are CLOSED.

    Args:
        threshold: failures within ``window_s`` that open a circuit.
        window_s: how far back failures count.
        open_s: how long an open circuit refuses attempts before it lets a probe through.

    Raises:
        ValueError: a setting is out of range.
    """

    def __init__(self, threshold: int = 5, window_s: float = 60.0, open_s: float = 30.0):
        _check(threshold, window_s, open_s)
        self.threshold = threshold
        self.window_s = float(window_s)
        self.open_s = float(open_s)
        self._circuits: dict[str, _Circuit] = {}

    def configure(self, name: str, *, threshold: int, window_s: float, open_s: float) -> None:
        """Give one circuit its own settings (the latest run to name it wins).

        Raises:
            ValueError: a setting is out of range.
        """
        _check(threshold, window_s, open_s)
        circuit = self._get(name)
        circuit.threshold, circuit.window_s, circuit.open_s = threshold, float(window_s), float(open_s)

    def _get(self, name: str) -> _Circuit:
        circuit = self._circuits.get(name)
        if circuit is None:
            circuit = self._circuits[name] = _Circuit(self.threshold, self.window_s, self.open_s)
        return circuit

    def state(self, name: str, now: float) -> str:
        """The circuit's state as ``allow`` would see it at ``now`` (does not let a probe out)."""
        circuit = self._circuits.get(name)
        if circuit is None:
            return CLOSED
        if circuit.state == OPEN and now - circuit.opened_at >= circuit.open_s:
            return HALF_OPEN
        return circuit.state

    def allow(self, name: str, now: float) -> bool:
        """May an attempt through this circuit go ahead now?

        CLOSED: yes. OPEN: no until ``open_s`` has passed; then the circuit is HALF_OPEN and
        this call, the probe, is the one let through. HALF_OPEN: no while the probe is out.
        """
        circuit = self._circuits.get(name)
        if circuit is None or circuit.state == CLOSED:
            return True
        if circuit.state == OPEN:
            if now - circuit.opened_at < circuit.open_s:
                return False
            circuit.state = HALF_OPEN
            circuit.probe_at = now
            return True
        # HALF_OPEN: one probe at a time; a probe unheard of for open_s is given up.
        if circuit.probe_at and now - circuit.probe_at < circuit.open_s:
            return False
        circuit.probe_at = now
        return True

    def record_success(self, name: str, now: float) -> None:
        """An attempt through the circuit succeeded: a HALF_OPEN circuit closes.

        A closed circuit with no failures left in its window is forgotten, so circuits
        of tasks that ran once do not pile up.
        """
        circuit = self._circuits.get(name)
        if circuit is None:
            return
        if circuit.state == HALF_OPEN:
            circuit.state = CLOSED
            circuit.failures.clear()
            circuit.probe_at = 0.0
        elif circuit.state == CLOSED:
            self._expire(circuit, now)
        if circuit.state == CLOSED and not circuit.failures:
            del self._circuits[name]

    def record_failure(self, name: str, now: float) -> bool:
        """An attempt through the circuit failed: count it; open the circuit if it is time.

        CLOSED: ``threshold`` failures within ``window_s`` open it. HALF_OPEN: the probe
        failed, so it opens again for another ``open_s``. OPEN: an attempt let through
        before it opened failed late; it changes nothing.

        Returns:
            True when this failure opened the circuit (alerting reports it).
        """
        circuit = self._get(name)
        if circuit.state == HALF_OPEN:
            self._open(circuit, now)
            return True
        if circuit.state == CLOSED:
            circuit.failures.append(now)
            self._expire(circuit, now)
            if len(circuit.failures) >= circuit.threshold:
                self._open(circuit, now)
                return True
        return False

    def threshold_of(self, name: str) -> int:
        """The failures within its window that open this circuit."""
        circuit = self._circuits.get(name)
        return self.threshold if circuit is None else circuit.threshold

    @staticmethod
    def _open(circuit: _Circuit, now: float) -> None:
        circuit.state = OPEN
        circuit.opened_at = now
        circuit.probe_at = 0.0

    @staticmethod
    def _expire(circuit: _Circuit, now: float) -> None:
        failures = circuit.failures
        while failures and now - failures[0] > circuit.window_s:
            failures.popleft()

    def snapshot(self, now: float | None = None) -> list[CircuitSnapshot]:
        """Every circuit that has seen a failure, sorted by name.

        With ``now``, an OPEN circuit whose ``open_s`` has passed shows as HALF_OPEN and
        failures that fell out of the window are not counted.
        """
        out = []
        for name in sorted(self._circuits):
            circuit = self._circuits[name]
            if now is not None and circuit.state == CLOSED:
                self._expire(circuit, now)
            state = circuit.state if now is None else self.state(name, now)
            if state == CLOSED and not circuit.failures:
                continue
            out.append(CircuitSnapshot(name, state, len(circuit.failures), circuit.opened_at))
        return out

    def __len__(self) -> int:
        return len(self._circuits)
