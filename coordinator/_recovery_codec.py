"""The shell's side of recovery handlers: encoding their arguments, decoding their answers.

Kept out of the pure :mod:`._recovery` so the state machine never imports pickle; the
engine hands :data:`PICKLE_CODEC` to :class:`~._state.SchedulerState`.
"""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

from xpipe import _codec
from xpipe._proto import common_pb2 as pb

from ._recovery import RecoveryCodec

__all__ = ["PICKLE_CODEC", "encode_args", "decode_result"]

#: A decision is a short string; a result larger than this is not one.
_MAX_DECISION_BYTES = 4096


def encode_args(args: tuple[Any, ...]) -> pb.Payload:
    """``args`` (plain strings, ints and dicts) as the pickled ``(args, kwargs)`` a worker decodes."""
    return _codec.encode((args, {}), "pickle", what=f"recovery arguments of {args[0]!r}")


class _StringsOnly(pickle.Unpickler):
    """Unpickles builtin scalars only: loading any class or function is refused.

    The result comes from a worker; the coordinator must not run code a hostile or broken
    worker put in a pickle.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def decode_result(payload: pb.Payload) -> Any:
    """The plain value a handler returned; raises (ValueError, UnpicklingError, ...) if it is not one."""
    if payload.artifact_ref or payload.zstd or len(payload.data) > _MAX_DECISION_BYTES:
        raise ValueError(f"a result of {payload.size_bytes or len(payload.data)} bytes is not a decision")
    if payload.codec == pb.CODEC_PICKLE:
        return _StringsOnly(io.BytesIO(payload.data)).load()
    if payload.codec == pb.CODEC_JSON:
        return json.loads(payload.data)
    if payload.codec == pb.CODEC_UNSPECIFIED and not payload.data:
        return None
    raise ValueError(f"a result with codec {payload.codec} is not a decision")


#: The codec of every engine: pickled arguments in, strings-only unpickling out.
PICKLE_CODEC = RecoveryCodec(encode_args=encode_args, decode_result=decode_result)
