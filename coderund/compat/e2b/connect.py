"""The Connect protocol over HTTP/1.1, server side, as envd speaks it: unary calls (a message in the
body, `application/json` or `application/proto`) and server-streaming ones (`application/connect+json`
or `+proto`: the request's one message and each answer enveloped, the end of the stream last with any
error), and Connect's error codes. Pure: no I/O."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from ...errors import AppError
from . import proto

END_STREAM = 0x02
COMPRESSED = 0x01
# Connect's codes, and the HTTP status a unary call answers each with: a method not served is a
# route not found (404), as Connect's own servers answer it, never a 5xx that input could cause.
STATUS = {"canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504, "not_found": 404,
          "already_exists": 409, "permission_denied": 403, "resource_exhausted": 429, "failed_precondition": 400,
          "aborted": 409, "out_of_range": 400, "unimplemented": 404, "internal": 500, "unavailable": 503,
          "data_loss": 500, "unauthenticated": 401}
MAX_TIMEOUT_DIGITS = 10  # Connect-Timeout-Ms: at most 10 digits


class ConnectError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def document(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Codec:
    streaming: bool
    binary: bool

    @property
    def content_type(self) -> str:
        return f"application/{'connect+' if self.streaming else ''}{'proto' if self.binary else 'json'}"

    def decode(self, message: proto.Message, body: bytes) -> dict[str, Any]:
        """The request's message (a streaming request's one envelope); invalid_argument if it is not one."""
        if self.streaming:
            body = _one_envelope(body)
        try:
            if self.binary:
                return proto.decode(message, body)
            return proto.from_json(message, json.loads(body or b"{}"))
        except (proto.ProtoError, ValueError, RecursionError) as e:
            raise ConnectError("invalid_argument", f"The {message.name} does not parse: {e}") from None

    def encode(self, message: proto.Message, value: dict[str, Any]) -> bytes:
        data = proto.encode(message, value) if self.binary else json.dumps(proto.to_json(message, value)).encode()
        return envelope(data) if self.streaming else data


def codec(content_type: str) -> Codec | None:
    """The codec a request's Content-Type names; None for one Connect does not define."""
    kind = content_type.split(";", 1)[0].strip().lower()
    streaming = kind.startswith("application/connect+")
    name = kind.removeprefix("application/connect+" if streaming else "application/")
    return Codec(streaming, name == "proto") if name in ("json", "proto") else None


def envelope(data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def end_stream(error: ConnectError | None = None) -> bytes:
    """The last envelope of a stream: JSON whatever the codec, with the error if it failed."""
    return envelope(json.dumps({"error": error.document()} if error else {}).encode(), END_STREAM)


def _one_envelope(body: bytes) -> bytes:
    if len(body) < 5:
        raise ConnectError("invalid_argument", "A streaming request carries one enveloped message.")
    flags, size = struct.unpack(">BI", body[:5])
    if flags & COMPRESSED:
        raise ConnectError("invalid_argument", "Compressed messages are not accepted; send them uncompressed.")
    if size != len(body) - 5:
        raise ConnectError("invalid_argument", "A streaming request carries exactly one enveloped message.")
    return body[5:]


def timeout_s(header: str | None) -> float | None:
    """Connect-Timeout-Ms as seconds; None without one, invalid_argument for one that is not a number."""
    if header is None:
        return None
    if not (header.isascii() and header.isdigit()) or len(header) > MAX_TIMEOUT_DIGITS:
        raise ConnectError("invalid_argument", "Connect-Timeout-Ms must be a whole number of at most 10 digits.")
    return int(header) / 1000


def from_app_error(e: AppError) -> ConnectError:
    """coderund's refusal as Connect's: an ended sandbox is unavailable, as E2B's are."""
    if e.refusal == "exists":
        return ConnectError("already_exists", e.message)
    code = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
            409: "failed_precondition", 410: "unavailable", 413: "resource_exhausted", 429: "resource_exhausted",
            503: "unavailable"}.get(e.status, "internal")
    return ConnectError(code, e.message)
