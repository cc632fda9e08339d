#!/usr/bin/python3
"""Checks that ballast's safetensors files and PyTorch agree, in both directions.

Usage: torch_safetensors_roundtrip.py IN OUT

Reads IN (written by ballast's safetensors test), validates its header the way the reference
safetensors implementation does, loads every tensor into torch and compares it with the values the
test wrote (each a simple function of the element index). Then writes OUT with every tensor
transformed (floats 2x+1, integers x+1, U8 255-x, BOOL negated), an extra tensor and new metadata,
ordered and padded like the reference writer but with header keys in a different order from the
data and non-ASCII text as \\u escapes, for the test to read back and check.

The format is read and written here with struct, json and torch alone (Debian ships no safetensors
package), which makes this an independent second implementation. Exits 0 when everything matches,
1 with a message otherwise.
"""
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import DTYPES, NAMES  # noqa: E402  (the format's dtype names)


def expected_inputs():
    """The tensors the C test writes, computed independently here."""
    def idx(n, dtype=torch.float64):
        return torch.arange(n, dtype=dtype)
    base = (idx(12) * 1.5).reshape(3, 4)
    return {
        "f32": ((idx(15) - 7) * 0.25).reshape(3, 5).float(),
        "f64": (idx(12) / 3.0 - 1).reshape(2, 3, 2),
        "i64": idx(4, torch.int64) * 3000000019 - 5,
        "i32": (idx(5, torch.int64) * -7 + 3).to(torch.int32),
        "u8": (idx(6, torch.int64) * 40).to(torch.uint8),
        "bool": idx(7, torch.int64) % 3 == 0,
        "f16": (idx(4) * 0.5 - 1).reshape(2, 2).half(),
        "bf16": (idx(3) * 2 - 1.5).bfloat16(),
        "scalar": torch.tensor(3.5, dtype=torch.float32),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
        "transposed": base.t().float(),
        "layer1.0.bn1.num_batches_tracked": torch.tensor(12345678901, dtype=torch.int64),
    }


EXPECTED_METADATA = {"format": "pt", "note": 'quote" backslash\\ newline\n tab\t unicode \u00fc\u4e2d\U0001f600'}


def fail(msg):
    print("torch_safetensors_roundtrip: " + msg, file=sys.stderr)
    sys.exit(1)


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        fail(f"{path}: too short")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        fail(f"{path}: header length {n} beyond the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    metadata = header.pop("__metadata__", None)
    spans = sorted((info["data_offsets"][0], info["data_offsets"][1], name) for name, info in header.items())
    at = 0
    for begin, end, name in spans:
        if begin != at:
            fail(f"{path}: tensor {name} starts at {begin}, expected {at} (gap or overlap)")
        at = end
    if at != len(data):
        fail(f"{path}: tensors cover {at} of {len(data)} data bytes")
    if (8 + n) % 8:
        fail(f"{path}: data section not 8-byte aligned (header length {n})")
    tensors = {}
    for name, info in header.items():
        dtype = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = info["shape"]
        numel = 1
        for s in shape:
            numel *= s
        if end - begin != numel * torch.empty(0, dtype=dtype).element_size():
            fail(f"{path}: tensor {name} has {end - begin} bytes for shape {shape}")
        buf = bytearray(data[begin:end])
        t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(shape)
    return tensors, metadata


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write(path, tensors, metadata):
    # Data ordered like the reference writer (wider dtypes first, then by name); header keys in
    # reverse name order so that key order and data order differ.
    def align_key(item):
        return (-item[1].element_size(), item[0])
    order = sorted(tensors.items(), key=align_key)
    header, chunks, offset = {}, [], 0
    for name, t in order:
        b = tensor_bytes(t)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    ordered = {"__metadata__": metadata}
    for name in sorted(header, reverse=True):
        ordered[name] = header[name]
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in chunks:
            f.write(b)


def transform(t):
    if t.dtype == torch.bool:
        return ~t
    if t.dtype == torch.uint8:
        return 255 - t
    if t.dtype.is_floating_point:
        return t * 2 + 1
    return t + 1


def main():
    if len(sys.argv) != 3:
        fail("usage: torch_safetensors_roundtrip.py IN OUT")
    tensors, metadata = read(sys.argv[1])
    want = expected_inputs()
    if set(tensors) != set(want):
        fail(f"tensor names differ: got {sorted(tensors)}, expected {sorted(want)}")
    for name, w in want.items():
        t = tensors[name]
        if t.dtype != w.dtype or list(t.shape) != list(w.shape) or not torch.equal(t, w):
            fail(f"tensor {name}: got {t.dtype} {list(t.shape)} {t.flatten()[:8].tolist()}, "
                 f"expected {w.dtype} {list(w.shape)} {w.flatten()[:8].tolist()}")
    if metadata != EXPECTED_METADATA:
        fail(f"metadata differs: got {metadata!r}")
    out = {name: transform(t) for name, t in tensors.items()}
    out["from_torch"] = torch.arange(10, dtype=torch.float32) / 4
    write(sys.argv[2], out, {"written_by": "torch", "torch_version": torch.__version__, "note": metadata["note"]})


if __name__ == "__main__":
    main()
