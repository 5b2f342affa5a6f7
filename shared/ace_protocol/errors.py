"""Stable error codes of protocol v1 and the one exception type that carries them.

Every failure a client can see has one of these codes and a message a person can act on. The codes are part
of the wire format: never rename one, only add.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    UNKNOWN_TASK = "unknown_task"
    MODEL_MISSING = "model_missing"
    OUT_OF_MEMORY = "out_of_memory"
    QUEUE_FULL = "queue_full"
    RATE_LIMITED = "rate_limited"
    INTERRUPTED = "interrupted"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A failure with a stable code. Raised by decoding/validation and by the engine; sent as `failed`/`error`."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        self.code = ErrorCode(code)
        self.message = message
        super().__init__(f"{self.code.value}: {message}")

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[ErrorCode, str]]:  # picklable across threads/processes
        return (type(self), (self.code, self.message))


def bad_request(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)
