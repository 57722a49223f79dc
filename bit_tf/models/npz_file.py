"""An `.npz` file read array by array: names, shapes and dtypes first, each array on demand.

`numpy.load` reads a whole `.npz` into memory when every key is asked for; a checkpoint of a
few gigabytes then needs its size again on top of the model it fills. `NpzFile` reads the
`.npy` headers when it opens the file (so names, shapes and dtypes are known without reading any
data), checks that every member's size matches its header, and reads one array at a time, into
a buffer of its own, as it is asked for. Nothing is unpickled: object arrays are refused by
their header, before any of their bytes are read.

Example:
    >>> with NpzFile("BiT-M-R50x1.npz") as arrays:
    ...     arrays.shapes["resnet/root_block/standardized_conv2d/kernel"]
    ...     kernel = arrays.read("resnet/root_block/standardized_conv2d/kernel")
    (7, 7, 3, 64)
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib

import numpy as np

_CHUNK_BYTES = 1 << 22
#: Arrays are placed at this alignment, which lets TensorFlow take them without a copy.
_ALIGNMENT = 64
#: What a damaged zip or `.npy` header can raise while it is read.
READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    ValueError,
    OSError,
    KeyError,
    SyntaxError,
    TypeError,
    NotImplementedError,
    OverflowError,
    struct.error,
)


class NpzError(ValueError):
    """An `.npz` member that cannot be read as a plain numeric array; the message names it."""


class NpzFile:
    """The arrays of an `.npz` file, read one at a time.

    Opening reads every member's `.npy` header (not its data) and checks that the member's size
    is what the header's shape and dtype need. `read(key)` reads one array; its zip checksum is
    checked as it is read. `verify()` reads everything once, in chunks, to check every checksum
    without holding more than a chunk. Close it (or use it as a context manager) when done.

    Args:
        path: the `.npz` file.
        numbers_only: refuse arrays whose dtype is not a number (strings, objects, records).

    Raises:
        NpzError: a member is not a `.npy` array, holds pickled objects (or, with
            `numbers_only`, non-numbers), or its size does not match its header.
        zipfile.BadZipFile, OSError, ... (`READ_ERRORS`): the file is not a readable zip.

    Example:
        >>> with NpzFile("weights.npz") as arrays:
        ...     total = sum(arrays.read(key).sum() for key in arrays.keys())
    """

    def __init__(self, path: str, numbers_only: bool = True):
        self.path = path
        self._zip = zipfile.ZipFile(path)
        try:
            self._members: dict[str, zipfile.ZipInfo] = {}
            self._headers: dict[str, tuple[tuple[int, ...], bool, np.dtype, int]] = {}
            for info in self._zip.infolist():
                key = info.filename.removesuffix(".npy")
                self._headers[key] = self._read_header(info, numbers_only)
                self._members[key] = info
        except BaseException:
            self._zip.close()
            raise

    def _read_header(self, info: zipfile.ZipInfo, numbers_only: bool):
        key = info.filename.removesuffix(".npy")
        with self._zip.open(info) as stream:
            try:
                version = np.lib.format.read_magic(stream)
            except ValueError:
                raise NpzError(f"member {info.filename!r} is not a .npy array") from None
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise NpzError(f"array {key!r} is in .npy format {version}, which is not read")
            header_bytes = stream.tell()
        if dtype.hasobject:
            raise NpzError(
                f"holds a pickled object array under key {key!r}; refusing to unpickle it "
                "(pickles can run code)"
            )
        if numbers_only and not np.issubdtype(dtype, np.number):
            raise NpzError(f"key {key!r} has dtype {dtype}, not numbers")
        data_bytes = math.prod(shape) * dtype.itemsize
        if info.file_size != header_bytes + data_bytes:
            raise NpzError(
                f"array {key!r} of shape {shape} and dtype {dtype} needs {data_bytes} bytes, "
                f"but its member holds {info.file_size - header_bytes}"
            )
        return tuple(shape), fortran_order, dtype, header_bytes

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Key -> shape, from the headers."""
        return {key: header[0] for key, header in self._headers.items()}

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        """Key -> dtype, from the headers."""
        return {key: header[2] for key, header in self._headers.items()}

    def keys(self) -> list[str]:
        """The array names, in the file's order."""
        return list(self._headers)

    def read(self, key: str) -> np.ndarray:
        """One array, read into a buffer of its own (aligned, writable)."""
        shape, fortran_order, dtype, header_bytes = self._headers[key]
        size = math.prod(shape) * dtype.itemsize
        buffer = np.empty(size + _ALIGNMENT, np.uint8)
        start = -buffer.ctypes.data % _ALIGNMENT
        view = memoryview(buffer[start : start + size])
        with self._zip.open(self._members[key]) as stream:
            stream.read(header_bytes)
            filled = 0
            while filled < size:
                count = stream.readinto(view[filled : filled + _CHUNK_BYTES])
                if not count:
                    raise EOFError(f"array {key!r} ends after {filled} of {size} bytes")
                filled += count
            if stream.read(1):
                raise NpzError(f"array {key!r} holds more bytes than its header says")
        flat = buffer[start : start + size].view(dtype)
        return flat.reshape(shape, order="F" if fortran_order else "C")

    def verify(self) -> None:
        """Reads every member once, in chunks, so that a damaged one fails here (its checksum)
        rather than half-way through filling a model."""
        for info in self._members.values():
            with self._zip.open(info) as stream:
                while stream.read(_CHUNK_BYTES):
                    pass

    def close(self) -> None:
        """Closes the file."""
        self._zip.close()

    def __enter__(self) -> NpzFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


__all__ = ["READ_ERRORS", "NpzError", "NpzFile"]
