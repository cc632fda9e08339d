#!/usr/bin/env python3
"""Writes the seed inputs of fuzz/corpus/<harness>/ (small valid files, and a few near misses)."""
import gzip, json, os, struct, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def put(harness, name, data):
    d = os.path.join(root, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def gz(b):
    return gzip.compress(b, mtime=0)

# safetensors: 8-byte header length, JSON header, data.
def st(tensors, meta=None):
    hdr, data = {}, b""
    if meta: hdr["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data

put("safetensors", "f32_2x3", st([("w", "F32", [2, 3], struct.pack("<6f", *range(6)))], {"format": "pt"}))
put("safetensors", "mixed", st([("a.weight", "F16", [2], b"\x00\x3c\x00\x40"), ("b", "I64", [], struct.pack("<q", 7)),
                                 ("c", "BF16", [1, 1], b"\x80\x3f"), ("d", "U8", [3], b"\x01\x02\x03")]))
put("safetensors", "empty", st([]))
put("safetensors", "zero_dim", st([("z", "F32", [0, 4], b""), ("i", "I32", [1], b"\x01\x00\x00\x00")]))

# IDX: magic (0, 0, type 0x08, ndim), big-endian dims, data.
def idx(dims, payload):
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload

imgs = idx([2, 3, 3], bytes(range(18)))
labels = idx([3], b"\x00\x01\x09")
put("idx", "images", imgs)
put("idx", "labels", labels)
put("idx", "images.gz", gz(imgs))
put("idx", "labels.gz", gz(labels))

# CIFAR: one record of label byte(s) + 3072 pixels; gzip'd keeps them small.
pix = bytes((i * 7) % 256 for i in range(3072))
put("cifar", "cifar10.gz", gz(b"\x03" + pix))
put("cifar", "cifar100.gz", gz(b"\x01\x2a" + pix))
put("cifar", "cifar10_x2", b"\x00" + pix + b"\x09" + pix)

# Index files: '#' comments, one index per line.
put("indices", "plain", "# long-tailed split\n# seed 1\n0\n3\n17\n1024\n")
put("indices", "crlf", "# c\r\n5\r\n6\r\n")
put("indices", "empty", "")

# Configs: a copy of a real one, flow lists, and override lines after NUL bytes.
put("config", "train", "model:\n  name: resnet32\n  num_classes: 10\ntrain:\n  epochs: 2\n  lr: 0.1\n"
    "  milestones: [160, 180]\n  augment:\n    crop_pad: 4\n    flip: true\ndata:\n  name: cifar10\n"
    "\0train.epochs=5\0train.milestones=[1, 2]\0method.name=ce\0bad\0")
put("config", "seq", "a:\n  - 1\n  - 2.5\n  - x\nb: \"quoted\"\nc: 'single'\nd: ~\n\0a=[3]\0b=null\0")
put("config", "base", "_base_: ../x.yaml\nk: 1\n")

# JSON headers.
put("json", "header", '{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}')
put("json", "values", '[null, true, false, -0.5e-3, 12345678901234567890, "a\\u00e9\\ud83d\\ude00\\n\\t\\"", {}, [], {"k": [1, {"x": 2}]}]')
put("json", "utf8", '{"\u00e9l\u00e8ve": "\u65e5\u672c", "n": 9007199254740993}')

# PNG by hand (zlib); JPEG with torchvision when it is importable (Debian's python3-torchvision).
import zlib

def png(w, h, color_type, bit_depth, rows, plte=None, extra=b""):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    if plte: out += chunk(b"PLTE", plte)
    out += extra
    return out + chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r for r in rows))) + chunk(b"IEND", b"")

put("image", "rgb.png", png(3, 2, 2, 8, [bytes(range(9)), bytes(range(9, 18))]))
put("image", "gray.png", png(2, 2, 0, 8, [b"\x00\xff", b"\x80\x40"]))
put("image", "rgba.png", png(1, 2, 6, 8, [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"]))
put("image", "gray16.png", png(1, 1, 0, 16, [b"\x12\x34"]))
put("image", "palette_trns.png", png(2, 1, 3, 4, [b"\x01"], plte=b"\xff\x00\x00\x00\xff\x00",
                                     extra=struct.pack(">I", 1) + b"tRNS\x80" + struct.pack(">I", zlib.crc32(b"tRNS\x80"))))
try:
    import torch, torchvision.io as tio
    x = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    put("image", "rgb.jpg", tio.encode_jpeg(x, quality=50).numpy().tobytes())
    put("image", "gray.jpg", tio.encode_jpeg(x[:1, :4, :], quality=75).numpy().tobytes())
except ImportError:
    print("torchvision not importable: no JPEG seeds", file=sys.stderr)
