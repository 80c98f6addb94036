"""Reading logs that may be huge (an agent stuck in a loop can write gigabytes): a log's tail,
read from its end, and its lines as a stream. Memory stays flat in a log's size."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


BLOCK_BYTES = 1 << 20  # what a stream reads at a time
UTF8_MAX_BYTES = 4  # the most bytes one character takes


def read_tail(path: Path, chars: int) -> str:
    """The last `chars` characters of a log (UTF-8; bytes that are not, replaced), reading only
    its end. A character cut in two by where the reading starts is left out. OSError as raised."""
    with open(path, "rb") as log:
        start = max(0, log.seek(0, os.SEEK_END) - chars * UTF8_MAX_BYTES)
        log.seek(start)
        data = log.read()
    if start:
        cut = 0
        while cut < min(UTF8_MAX_BYTES - 1, len(data)) and data[cut] & 0xC0 == 0x80:  # continuation bytes
            cut += 1
        data = data[cut:]
    return data.decode("utf-8", errors="replace")[-chars:] if chars > 0 else ""


def line_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """A log's bytes in blocks of whole lines, each under 2 x block_bytes; a line longer than
    block_bytes comes in pieces of it. OSError as raised."""
    with open(path, "rb") as log:
        carry = b""
        while chunk := log.read(block_bytes):
            data = carry + chunk
            end = data.rfind(b"\n") + 1
            if end:
                yield data[:end]
            carry = data[end:]
            if len(carry) >= block_bytes:  # no line end in sight: a piece of one long line
                yield carry
                carry = b""
        if carry:
            yield carry
