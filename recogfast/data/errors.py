"""Bad-data handling shared by the datasets and both loader backends.

Every problem with an input file ends as a :class:`DataError` that names the file, or (with
``on_error="skip"``) as a skipped sample that the loader counts and reports at the end of the epoch
with a :class:`SkippedSamplesWarning`. Nothing is dropped silently.
"""

from __future__ import annotations

import os
import warnings

ON_ERROR = ("raise", "skip")

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
# Markers never occur inside JPEG entropy-coded data (0xFF is stuffed as FF 00), so an EOI marker near
# the end is a reliable "not truncated" test; some writers append a few bytes of padding after it.
_TAIL = 4096


class DataError(RuntimeError):
    """An input file (image or annotation) that cannot be used; ``path`` names it."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class SkippedSamplesWarning(UserWarning):
    """Issued at the end of an epoch in which ``on_error="skip"`` dropped unreadable samples."""


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


def encoded_image_problem(data: bytes | memoryview, complete: bool = True) -> str | None:
    """Why these encoded bytes are not a complete JPEG or PNG file, or None when they look complete.

    Cheap checks on the bytes both backends read anyway (no decoding): empty file, unknown format,
    truncated JPEG (no end-of-image marker) or PNG (no IEND chunk). With `complete` (the whole file, as
    both loaders read it) a JPEG's segment structure is walked too: segment lengths that run past the end
    and invalid markers in the entropy-coded data (garbage mid-stream) are problems, which libjpeg-turbo
    in torchvision refuses while DALI's decoders would decode them silently (with a warning on stderr) --
    so both backends decide alike. Grayscale and CMYK JPEGs and PNGs are valid: both backends decode them
    to 3-channel RGB.
    """
    n = len(data)
    if n == 0:
        return "empty file"
    head = bytes(data[:8])
    tail = bytes(data[max(0, n - _TAIL):])
    if head.startswith(_JPEG_SOI):
        if _JPEG_EOI not in tail:
            return "truncated JPEG (no end-of-image marker)"
        return _jpeg_structure_problem(data) if complete else None
    if head.startswith(_PNG_SIGNATURE):
        if _PNG_IEND not in tail:
            return "truncated PNG (no IEND chunk)"
        return None
    return f"not a JPEG or PNG file (starts with {head[:4].hex(' ')})"


def _jpeg_structure_problem(data: bytes | memoryview) -> str | None:
    """Walk the JPEG's segments from SOI to EOI (ITU-T T.81 B.1): every length inside the file, every marker
    one that exists; entropy-coded data after each SOS is skipped with one vectorised search for the next
    marker (0xFF followed by neither a stuffed 0x00, a fill 0xFF nor a restart marker)."""
    import numpy as np

    a = np.frombuffer(data, dtype=np.uint8)
    n, pos = a.size, 2
    while pos < n:
        if a[pos] != 0xFF:
            return f"corrupt JPEG (a marker expected at byte {pos}, found 0x{int(a[pos]):02x})"
        while pos < n and a[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker, at = int(a[pos]), pos - 1
        pos += 1
        if marker == 0xD9:
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        if 0x02 <= marker <= 0xBF:
            return f"corrupt JPEG (invalid marker 0xff{marker:02x} at byte {at})"
        if pos + 2 > n:
            break
        length = (int(a[pos]) << 8) | int(a[pos + 1])
        if length < 2 or pos + length > n:
            return f"corrupt JPEG (segment 0xff{marker:02x} at byte {at} runs past the end of the file)"
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            body, nxt = a[pos:-1], a[pos + 1:]
            found = np.flatnonzero((body == 0xFF) & (nxt != 0x00) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7)))
            if found.size == 0:
                break
            pos += int(found[0])
    return "truncated JPEG (no end-of-image marker)"


def read_encoded(path: str) -> bytes:
    """The raw bytes of an image file; a :class:`DataError` naming the path when it is missing,
    unreadable, or not a complete JPEG/PNG."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"cannot read image file {path}: {err.strerror or err}", path) from err
    problem = encoded_image_problem(data)
    if problem is not None:
        raise DataError(f"bad image file {path}: {problem}", path)
    return data


def file_problem(path: str) -> str | None:
    """Why an image file cannot be used (missing, unreadable, empty, wrong signature, no end marker),
    or None: :func:`encoded_image_problem` on its first and last bytes only (no decoding)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= 8 + _TAIL:
                data = f.read()
            else:
                head = f.read(8)
                f.seek(size - _TAIL)
                data = head + f.read()
    except OSError as err:
        return f"cannot read image file {path}: {err.strerror or err}"
    problem = encoded_image_problem(data, complete=False)  # the first and last bytes only
    return None if problem is None else f"bad image file {path}: {problem}"


class SkipLog:
    """Skipped samples of the current epoch, reported by :meth:`report` at its end."""

    def __init__(self):
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        if all(path != p for p, _ in self.items):  # a retried batch reports a file once
            self.items.append((path, reason))

    def report(self, backend: str) -> None:
        if self.items:
            path, reason = self.items[0]
            warnings.warn(
                f"recogfast.data ({backend}): skipped {len(self.items)} unreadable sample(s) this epoch "
                f"(on_error='skip'); first: {path}: {reason}",
                SkippedSamplesWarning,
                stacklevel=3,
            )
