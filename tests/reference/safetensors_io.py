"""safetensors_io.py: a tiny reader/writer of the safetensors format, numpy only.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian u64 N, then N bytes of
UTF-8 JSON {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}} (padded with spaces so that N is a multiple of 8), then the byte
buffer; offsets are relative to the start of the buffer, little-endian, row-major, contiguous.

    save(path, {"w": np.zeros((2, 3), np.float32)}, metadata={"k": "v"})
    tensors, metadata = load(path)

Tensors are written in name order, so the bytes depend only on the content.
BF16 is read into float32 and written from float32 (round to nearest even).
"""
from __future__ import annotations

import json
import struct
from typing import Dict, Optional, Tuple

import numpy as np

# safetensors dtype -> little-endian numpy dtype
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_BF16 = "BF16"


def _code_of(a: np.ndarray) -> str:
    for code, dt in _DTYPES.items():
        if a.dtype == dt or a.dtype == dt.newbyteorder("="):
            return code
    raise TypeError(f"unsupported numpy dtype {a.dtype} (supported: {sorted(_DTYPES)} and BF16)")


def _f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
    nan = np.isnan(a.astype(np.float32))
    out = rounded.astype("<u2")
    out[nan] = 0x7FC0
    return out


def dumps(tensors: Dict[str, np.ndarray], metadata: Optional[Dict[str, str]] = None,
          bf16: Tuple[str, ...] = ()) -> bytes:
    """Serialise {name: array} (+ string metadata). Names in `bf16` are stored as BF16."""
    header: dict = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved")
        a = np.asarray(tensors[name])
        if name in bf16:
            code, raw = _BF16, _f32_to_bf16_bits(a).tobytes()
        else:
            code = _code_of(a)
            raw = np.ascontiguousarray(a, dtype=_DTYPES[code]).tobytes()
        header[name] = {"dtype": code, "shape": [int(d) for d in a.shape],
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def save(path: str, tensors: Dict[str, np.ndarray], metadata: Optional[Dict[str, str]] = None,
         bf16: Tuple[str, ...] = ()) -> None:
    with open(path, "wb") as f:
        f.write(dumps(tensors, metadata, bf16))


def loads(data: bytes) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Parse and validate; returns ({name: array}, metadata)."""
    if len(data) < 8:
        raise ValueError(f"file too short ({len(data)} bytes) for the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"header length {n} runs past the end of the file ({len(data)} bytes)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("__metadata__ must map strings to strings")
    buf = memoryview(data)[8 + n:]
    tensors: Dict[str, np.ndarray] = {}
    spans = []
    for name, info in header.items():
        code, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        count = 1
        for d in shape:
            if not isinstance(d, int) or d < 0:
                raise ValueError(f"{name}: bad shape {shape}")
            count *= d
        itemsize = 2 if code == _BF16 else (_DTYPES[code].itemsize if code in _DTYPES else None)
        if itemsize is None:
            raise ValueError(f"{name}: unsupported dtype {code}")
        if not (0 <= begin <= end <= len(buf)):
            raise ValueError(f"{name}: data_offsets [{begin}, {end}] outside the buffer ({len(buf)})")
        if end - begin != count * itemsize:
            raise ValueError(f"{name}: {end - begin} bytes for shape {shape} of {code}")
        raw = bytes(buf[begin:end])
        if code == _BF16:
            bits = np.frombuffer(raw, dtype="<u2").astype("<u4") << 16
            arr = bits.view("<f4").reshape(shape)
        else:
            arr = np.frombuffer(raw, dtype=_DTYPES[code]).reshape(shape).copy()
        tensors[name] = arr
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise ValueError(f"{name}: data starts at {begin}, expected {pos} (gap or overlap)")
        pos = end
    if pos != len(buf):
        raise ValueError(f"buffer has {len(buf) - pos} trailing bytes not covered by any tensor")
    return tensors, metadata


def load(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    with open(path, "rb") as f:
        return loads(f.read())
