"""The IDX file format (MNIST's): a reader in plain numpy, no TensorFlow."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"



class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file (bad magic, truncated, corrupt gzip...)."""



def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (the MNIST file format) into a numpy array.

    The header is two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte with the number of dimensions D, then D big-endian
    uint32 sizes; the big-endian data follow. Gzip-compressed files are recognised by their
    content, whatever their name.

    Args:
      path: the file, gzip-compressed or not.

    Returns:
      An array of shape (d_1, ..., d_D) in the file's dtype, native byte order, writable.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      IDXFormatError: corrupt gzip, bad magic number, truncated header or data, trailing bytes.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"read_idx: IDX file {path} {what}.")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IDXFormatError(
                f"read_idx: {path} is a truncated or corrupt gzip file ({type(err).__name__}: {err})."
            ) from None
    if len(raw) < 4:
        raise IDXFormatError(
            f"read_idx: {path} is truncated: expected at least 4 bytes (the magic number), "
            f"got {len(raw)}."
        )
    zero, type_code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or type_code not in _IDX_DTYPES:
        raise IDXFormatError(
            f"read_idx: {path} is not an IDX file: bad magic number 0x{raw[:4].hex()}; expected "
            "0x0000TTDD with type byte TT in {08, 09, 0b, 0c, 0d, 0e} and DD the number of "
            "dimensions (MNIST images: 0x00000803, labels: 0x00000801)."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFormatError(
            f"read_idx: {path} is truncated: expected {header} header bytes for {ndim} "
            f"dimensions, got {len(raw)}."
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has trailing bytes"
        raise IDXFormatError(
            f"read_idx: {path} {problem}: a {dtype.newbyteorder('=').name} array of shape {shape} "
            f"needs {expected} bytes (header included), got {len(raw)}."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))
