"""A stage instance's line to the coordinator: reports, control answers, checkpoints.

It uses the SDK's :class:`~xpipe.Client` (leader following, retries, TLS and token from the
environment the worker gives its task processes), called from a thread so the instance's
event loop never waits on it. One call per second per instance is the whole load.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ..errors import DataStreamError

__all__ = ["Control"]

#: The environment variable naming the coordinators (the worker sets it for its task processes).
COORDINATOR_ENV = "XPIPE_COORDINATOR"
#: A control call waits this long before the instance goes on without its answer.
CALL_TIMEOUT_S = 10.0


class Control:
    """Report, checkpoint and restore for one instance, through ``StreamService``."""

    def __init__(self, client: Any) -> None:
        from .._proto import stream_pb2, stream_pb2_grpc

        self._client = client
        self._pb = stream_pb2
        self._stub = stream_pb2_grpc.StreamServiceStub

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Control | None:
        """A Control on ``$XPIPE_COORDINATOR``; None when it is not set (no coordinator to tell).

        Raises:
            DataStreamError: the address is malformed.
        """
        env = os.environ if environ is None else environ
        address = env.get(COORDINATOR_ENV, "")
        if not address:
            return None
        from .._client import Client

        try:
            return cls(Client(address, call_timeout_s=CALL_TIMEOUT_S))
        except ValueError as exc:
            raise DataStreamError(f"${COORDINATOR_ENV}={address!r}: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def _ref(self, ref: dict[str, Any]) -> Any:
        return self._pb.InstanceRef(**ref)

    async def _call(self, fn: Any) -> Any:
        return await asyncio.to_thread(self._client._call_on, self._stub, fn)

    async def report(self, ref: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
        """Send a report; the coordinator's answer as keyword arguments for ``apply_control``."""
        message = self._pb.InstanceReport(ref=self._ref(ref), at=time.time(), **report)
        answer = await self._call(lambda stub: stub.ReportInstance(message, timeout=CALL_TIMEOUT_S))
        return {
            "stop": answer.stop, "drain": answer.drain, "active_instances": answer.active_instances, "fenced": answer.fenced,
        }  # fmt: skip

    async def save_checkpoint(self, ref: dict[str, Any], state: bytes, positions: dict[int, str], seq: int) -> None:
        message = self._pb.StreamCheckpoint(ref=self._ref(ref), state=state, positions=positions, seq=seq)
        await self._call(lambda stub: stub.SaveCheckpoint(message, timeout=CALL_TIMEOUT_S))

    async def load_checkpoint(self, stream: str, stage: str, instance: int) -> tuple[bytes, dict[int, str], int] | None:
        """``(state, positions, seq)`` of the last checkpoint, or None when there is none."""
        request = self._pb.LoadCheckpointRequest(stream=stream, stage=stage, instance=instance)
        answer = await self._call(lambda stub: stub.LoadCheckpoint(request, timeout=CALL_TIMEOUT_S))
        if not answer.at and not answer.seq:
            return None
        return answer.state, dict(answer.positions), answer.seq
