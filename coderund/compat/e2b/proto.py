"""Protocol Buffers, as far as envd's messages need: the binary wire format and proto3's JSON mapping,
driven by message definitions written here (messages.py), so no generated code and no dependency.

A message's value is a dict keyed by the fields' proto names; a field that is absent, or at its
default without `optional`, is not sent. Enums are their numbers, timestamps seconds since the epoch
(a float), maps dicts of strings. Both decoders skip fields they do not know, as proto3 readers do,
and refuse a malformed message with ProtoError. Pure: no I/O.
"""
from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SCALARS = ("string", "bytes", "bool", "uint32", "int32", "sint32", "int64")
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
RANGES = {"uint32": (0, 2**32 - 1), "int32": (-2**31, 2**31 - 1), "sint32": (-2**31, 2**31 - 1),
          "int64": (-2**63, 2**63 - 1)}


class ProtoError(ValueError):
    """A message that does not parse as its definition says."""


@dataclass(frozen=True)
class Enum:
    name: str
    values: dict[str, int]

    def name_of(self, number: int) -> str | int:
        return next((name for name, n in self.values.items() if n == number), number)


@dataclass(frozen=True)
class Field:
    number: int
    name: str
    kind: str  # a scalar of SCALARS, "enum", "message", "map" (of strings) or "timestamp"
    of: Any = None  # the Message or Enum of an "enum" or "message" field
    repeated: bool = False
    optional: bool = False  # sent whenever set, even at its default (proto3 optional, a oneof's member)

    @property
    def json_name(self) -> str:
        first, *rest = self.name.split("_")
        return first + "".join(part.capitalize() for part in rest)


@dataclass(frozen=True)
class Message:
    name: str
    fields: tuple[Field, ...]
    by_number: dict[int, Field] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_number", {f.number: f for f in self.fields})


def _is_default(f: Field, value: Any) -> bool:
    if f.repeated or f.kind == "map":
        return not value
    if f.optional:
        return False
    if f.kind == "message":
        return False  # a message field that is set is sent, even empty
    return value in (0, "", b"", False)


# ---- the binary wire format ----

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers as two's complement, ten bytes
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _scalar(f: Field, value: Any) -> tuple[int, bytes]:
    kind = "int32" if f.kind == "enum" else f.kind
    if kind == "string":
        return LENGTH, value.encode()
    if kind == "bytes":
        return LENGTH, bytes(value)
    if kind == "bool":
        return VARINT, _varint(1 if value else 0)
    if kind == "sint32":
        return VARINT, _varint((value << 1) ^ (value >> 31))
    if kind == "timestamp":
        seconds = math.floor(value)
        return LENGTH, encode(TIMESTAMP, {"seconds": seconds, "nanos": int(round((value - seconds) * 1e9)) % 10**9})
    return VARINT, _varint(int(value))


def encode(message: Message, value: dict[str, Any]) -> bytes:
    out = bytearray()
    for f in message.fields:
        item = value.get(f.name)
        if item is None or _is_default(f, item):
            continue
        if f.kind == "map":
            for k, v in item.items():
                out += _key(f.number, LENGTH) + _length(encode(MAP_ENTRY, {"key": k, "value": v}))
            continue
        for one in item if f.repeated else (item,):
            if f.kind == "message":
                out += _key(f.number, LENGTH) + _length(encode(f.of, one))
            else:
                wire, data = _scalar(f, one)
                out += _key(f.number, wire) + (_length(data) if wire == LENGTH else data)
    return bytes(out)


def _length(data: bytes) -> bytes:
    return _varint(len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = memoryview(data), 0

    def varint(self) -> int:
        n = shift = 0
        while True:
            if self.at >= len(self.data) or shift > 63:
                raise ProtoError("a truncated or overlong varint")
            byte = self.data[self.at]
            self.at += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return n

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise ProtoError("a field runs past the end of the message")
        chunk = bytes(self.data[self.at:self.at + size])
        self.at += size
        return chunk

    def skip(self, wire: int) -> None:
        if wire == VARINT:
            self.varint()
        elif wire == FIXED64:
            self.take(8)
        elif wire == LENGTH:
            self.take(self.varint())
        elif wire == FIXED32:
            self.take(4)
        else:
            raise ProtoError(f"wire type {wire} is not one of proto3's")


def _signed(n: int, bits: int) -> int:
    """A varint's value as a signed integer of that many bits (two's complement)."""
    n &= (1 << bits) - 1
    return n - (1 << bits) if n >> (bits - 1) else n


def _read_scalar(f: Field, reader: _Reader, wire: int) -> Any:
    if f.kind in ("string", "bytes", "timestamp"):
        if wire != LENGTH:
            raise ProtoError(f"'{f.name}' has wire type {wire}, not {LENGTH}")
        data = reader.take(reader.varint())
        if f.kind == "bytes":
            return data
        if f.kind == "timestamp":
            stamp = decode(TIMESTAMP, data)
            return stamp.get("seconds", 0) + stamp.get("nanos", 0) / 1e9
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise ProtoError(f"'{f.name}' is not UTF-8") from None
    if wire != VARINT:
        raise ProtoError(f"'{f.name}' has wire type {wire}, not {VARINT}")
    n = reader.varint()
    if f.kind == "bool":
        return n != 0
    if f.kind == "uint32":
        return n & 0xFFFFFFFF
    if f.kind == "sint32":
        n &= 0xFFFFFFFF
        return (n >> 1) ^ -(n & 1)
    return _signed(n, 64 if f.kind == "int64" else 32)


def decode(message: Message, data: bytes) -> dict[str, Any]:
    reader, value = _Reader(data), {}
    while reader.at < len(reader.data):
        key = reader.varint()
        number, wire = key >> 3, key & 7
        f = message.by_number.get(number)
        if f is None:
            reader.skip(wire)
            continue
        if f.kind == "map":
            if wire != LENGTH:
                raise ProtoError(f"'{f.name}' has wire type {wire}, not {LENGTH}")
            entry = decode(MAP_ENTRY, reader.take(reader.varint()))
            value.setdefault(f.name, {})[entry.get("key", "")] = entry.get("value", "")
            continue
        if f.kind == "message":
            if wire != LENGTH:
                raise ProtoError(f"'{f.name}' has wire type {wire}, not {LENGTH}")
            item = decode(f.of, reader.take(reader.varint()))
        else:
            item = _read_scalar(f, reader, wire)
        if f.repeated:
            value.setdefault(f.name, []).append(item)
        else:
            value[f.name] = item
    return value


# ---- proto3's JSON mapping ----

def _json_scalar(f: Field, value: Any) -> Any:
    if f.kind == "bytes":
        return base64.b64encode(bytes(value)).decode()
    if f.kind == "int64":
        return str(int(value))
    if f.kind == "enum":
        return f.of.name_of(value)
    if f.kind == "timestamp":
        return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
    if f.kind == "message":
        return to_json(f.of, value)
    return value


def to_json(message: Message, value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in message.fields:
        item = value.get(f.name)
        if item is None or _is_default(f, item):
            continue
        if f.kind == "map":
            out[f.json_name] = dict(item)
        elif f.repeated:
            out[f.json_name] = [_json_scalar(f, one) for one in item]
        else:
            out[f.json_name] = _json_scalar(f, item)
    return out


def _from_json_scalar(f: Field, item: Any) -> Any:
    where = f"'{f.json_name}'"
    if f.kind == "message":
        return from_json(f.of, item)
    if f.kind == "string":
        if not isinstance(item, str):
            raise ProtoError(f"{where} must be a string.")
        return item
    if f.kind == "bytes":
        if not isinstance(item, str):
            raise ProtoError(f"{where} must be base64 in a string.")
        try:
            padded = item + "=" * (-len(item) % 4)
            return base64.urlsafe_b64decode(padded) if "-" in item or "_" in item else base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise ProtoError(f"{where} is not base64.") from None
    if f.kind == "bool":
        if not isinstance(item, bool):
            raise ProtoError(f"{where} must be true or false.")
        return item
    if f.kind == "timestamp":
        try:
            return datetime.fromisoformat(item.replace("Z", "+00:00")).timestamp()
        except (AttributeError, ValueError):
            raise ProtoError(f"{where} must be an RFC 3339 time.") from None
    if f.kind == "enum":
        if isinstance(item, str) and item in f.of.values:
            return f.of.values[item]
        if isinstance(item, int) and not isinstance(item, bool) and -2**31 <= item < 2**31:
            return item
        raise ProtoError(f"{where} must be one of {', '.join(f.of.values)}.")
    number = item
    if isinstance(item, str):
        try:
            number = int(item)
        except ValueError:
            raise ProtoError(f"{where} must be a whole number.") from None
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    low, high = RANGES[f.kind]
    if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
        raise ProtoError(f"{where} must be a whole number from {low} to {high}.")
    return number


def from_json(message: Message, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtoError(f"A {message.name} must be a JSON object.")
    value: dict[str, Any] = {}
    for f in message.fields:
        item = obj.get(f.json_name, obj.get(f.name))
        if item is None:
            continue
        if f.kind == "map":
            if not isinstance(item, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in item.items()):
                raise ProtoError(f"'{f.json_name}' must be an object of strings.")
            value[f.name] = dict(item)
        elif f.repeated:
            if not isinstance(item, list):
                raise ProtoError(f"'{f.json_name}' must be a list.")
            value[f.name] = [_from_json_scalar(f, one) for one in item]
        else:
            value[f.name] = _from_json_scalar(f, item)
    return value


MAP_ENTRY = Message("MapEntry", (Field(1, "key", "string"), Field(2, "value", "string")))
TIMESTAMP = Message("google.protobuf.Timestamp", (Field(1, "seconds", "int64"), Field(2, "nanos", "int32")))
