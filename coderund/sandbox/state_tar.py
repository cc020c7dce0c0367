"""A check of a persisted sandbox state (a tar) as it streams to its restore: only the kinds of
member tar itself writes of a sandbox's files. Pure: no I/O.

The restore unpacks as the sandbox's user, which already keeps it inside that user's reach; this
refuses what that alone would not everywhere: a device node (gVisor's tmpfs lets nobody make one),
a FIFO, or a header tar would not have written.
"""
from __future__ import annotations

BLOCK = 512
FILE, HARDLINK, SYMLINK, FOLDER, CONTIGUOUS = b"0", b"1", b"2", b"5", b"7"
LONG_NAME, LONG_LINK, PAX, PAX_GLOBAL = b"L", b"K", b"x", b"g"  # records about the next member
ALLOWED = {b"\0", FILE, HARDLINK, SYMLINK, FOLDER, CONTIGUOUS, LONG_NAME, LONG_LINK, PAX, PAX_GLOBAL}


class BadState(ValueError):
    """A persisted state that is no sandbox's files."""


class TarCheck:
    """Fed a tar in chunks of any size; raises BadState at the first member that may not be restored."""

    def __init__(self) -> None:
        self.header = bytearray()
        self.skip = 0  # of the current member's data, padded to its block

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            if self.skip:
                taken = min(self.skip, len(view))
                self.skip -= taken
                view = view[taken:]
                continue
            needed = BLOCK - len(self.header)
            self.header += view[:needed]
            view = view[needed:]
            if len(self.header) == BLOCK:
                self._header(bytes(self.header))
                self.header.clear()

    def _header(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            return  # the end's zero blocks
        kind = header[156:157]
        if kind not in ALLOWED:
            raise BadState(f"a member of kind {kind!r} (only files, folders and links are restored)")
        size = _size(header[124:136])
        self.skip = -(-size // BLOCK) * BLOCK


def _size(field: bytes) -> int:
    """A header's size: octal digits, or GNU's base-256 for large ones."""
    if field[0] & 0x80:
        if field[0] & 0x40:
            raise BadState("a member of negative size")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(digits or b"0", 8)
    except ValueError:
        raise BadState("a header that is not tar's") from None
