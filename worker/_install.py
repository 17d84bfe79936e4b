"""Installing packages on this worker with pip, into its own directory (``--install-dir``).

The worker's Python environment (its venv) is never modified: pip runs with ``--target``
into a directory that executor children have on ``sys.path`` (after the environment's own
entries, so an installed package cannot shadow what xpipe itself runs on). pip inherits the
worker's environment, so the operator chooses where packages come from with ``PIP_INDEX_URL``,
``PIP_EXTRA_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX`` or a pip config file; a caller
only names packages (checked by :func:`xpipe._install.requirements_problem`, again here,
since the worker trusts no coordinator).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass

from xpipe._domain import PRIVATE_DIR_MODE
from xpipe._install import FAILED, INSTALLED, REFUSED, requirements_problem, timeout_problem
from xpipe._limits import INSTALL_OUTPUT_TAIL_CHARS

__all__ = ["InstallOutcome", "PipInstaller", "default_install_dir", "pip_argv"]

log = logging.getLogger(__name__)

#: After pip is killed (timeout, shutdown), how long to wait for it to be gone.
_KILL_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class InstallOutcome:
    """One worker's answer: a status of :data:`xpipe._install.INSTALL_STATUSES`, why, pip's output tail."""

    status: str
    message: str
    output_tail: str = ""


def default_install_dir(worker_name: str) -> str:
    """``$XDG_DATA_HOME/xpipe/packages/<worker name>`` (``~/.local/share`` without XDG_DATA_HOME).

    Per worker name, so two workers on one machine do not run pip into the same directory.
    """
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "xpipe", "packages", re.sub(r"[^A-Za-z0-9._-]", "_", worker_name) or "worker")


def pip_argv(target_dir: str, packages: list[str]) -> list[str]:
    """The pip command line: this interpreter's pip, no prompts, into ``target_dir`` only.

    ``--upgrade`` lets a newer requested version replace one installed there before (without
    it pip keeps the old directory and only warns). ``--`` is not needed: every entry was
    checked not to start with ``-``.
    """
    return [
        sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--upgrade",
        "--target", target_dir, *packages,
    ]  # fmt: skip


class PipInstaller:
    """Runs pip for ``InstallPackages`` messages, one install at a time.

    Args:
        target_dir: where packages go (created private to this user at :meth:`prepare`).
        allowed: the worker runs with ``--allow-install``; without it every request is REFUSED.
    """

    def __init__(self, target_dir: str, *, allowed: bool):
        self.target_dir = os.path.abspath(target_dir)
        self.allowed = allowed
        self._lock = asyncio.Lock()

    def prepare(self) -> None:
        """Create the directory and put it on ``sys.path`` (children inherit it); only when allowed.

        It must exist before the executor's children start: a directory missing from the
        path at import time is cached as "nothing here" for the child's life.
        """
        if not self.allowed:
            return
        os.makedirs(self.target_dir, mode=PRIVATE_DIR_MODE, exist_ok=True)
        if self.target_dir not in sys.path:
            sys.path.append(self.target_dir)
        log.info("installs allowed: pip installs into %s", self.target_dir)

    async def install(self, packages: list[str], timeout_s: float) -> InstallOutcome:
        """Check, then run pip; never raises for pip's own failures (they are FAILED outcomes)."""
        if not self.allowed:
            return InstallOutcome(REFUSED, "this worker does not install packages; start it with --allow-install")
        problem = requirements_problem(packages) or timeout_problem(timeout_s)
        if problem:
            return InstallOutcome(REFUSED, problem)
        async with self._lock:
            return await self._run_pip(list(packages), timeout_s)

    async def _run_pip(self, packages: list[str], timeout_s: float) -> InstallOutcome:
        argv = pip_argv(self.target_dir, packages)
        log.info("installing %s into %s", " ".join(packages), self.target_dir)
        # The stdlib's spawn (vfork + exec), not the event loop's: uvloop's fork-based spawn
        # crashes the child (SIGSEGV) in a process that holds gRPC channels. Own process group,
        # so a timeout ends pip and whatever build backend it started.
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,  # noqa: ASYNC220
                                    start_new_session=True)  # fmt: skip
        except OSError as exc:
            return InstallOutcome(FAILED, f"cannot start pip: {exc}")
        try:
            out, _ = await asyncio.to_thread(proc.communicate, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            await _kill(proc)
            return InstallOutcome(FAILED, f"pip did not finish within {timeout_s:g} s; stopped")
        except asyncio.CancelledError:  # the worker is stopping: pip must not outlive it
            _killpg(proc.pid)
            raise
        tail = out.decode(errors="replace")[-INSTALL_OUTPUT_TAIL_CHARS:]
        if proc.returncode != 0:
            log.warning("pip install %s failed with %s", " ".join(packages), _exit(proc.returncode))
            return InstallOutcome(FAILED, f"pip exited with {_exit(proc.returncode)}", tail)
        return InstallOutcome(INSTALLED, f"installed {', '.join(packages)} into {self.target_dir}", tail)


def _exit(code: int) -> str:
    return f"code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def _kill(proc: subprocess.Popen) -> None:
    """Kill pip with its process group (it may run build backends), then reap it."""
    _killpg(proc.pid)
    try:
        await asyncio.to_thread(proc.communicate, timeout=_KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        log.error("pip (pid %d) did not exit within %g s of SIGKILL", proc.pid, _KILL_WAIT_S)
