#!/usr/bin/python3
"""Checks `ballast predict` against PyTorch from outside: for each model, PyTorch builds the twin
(tools/torch_models.py) with random weights and non-trivial BatchNorm statistics, writes them as
safetensors and a few images as a CIFAR binary and a PNG; ballast predicts; the logits must agree.

usage: check_predict.py PATH/TO/ballast      (exit 0 = all agree; prints one line per model)
"""
import os
import struct
import subprocess
import sys
import tempfile
import zlib

try:
    import torch
except ImportError:
    print("skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)")
    print("0 passed, 0 failed")
    sys.exit(0)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensors_io  # noqa: E402
import torch_models  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)


def write_png(path, rgb):
    """A minimal RGB PNG writer (8-bit, no filter), independent of ballast's libpng reader."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + bytes(rgb[y].reshape(-1).tolist()) for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def check(ballast, name, workdir, extra):
    torch.manual_seed(0)
    model = torch_models.build(name, 10)
    with torch.no_grad():  # running statistics away from (0, 1), so eval mode is really tested
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    model.eval()
    weights = os.path.join(workdir, f"{name}.safetensors")
    safetensors_io.save(model.state_dict(), weights)
    pixels = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(5, dtype=torch.uint8).reshape(5, 1)
    cifar = os.path.join(workdir, "images.bin")
    with open(cifar, "wb") as f:
        f.write(torch.cat([labels, pixels.reshape(5, -1)], 1).numpy().tobytes())
    png = os.path.join(workdir, "extra.png")
    extra_pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8)
    write_png(png, extra_pixels.numpy())
    out = os.path.join(workdir, f"{name}.csv")
    cmd = [ballast, "predict", "--model", name, "--classes", "10", "--weights", weights, "--input", cifar,
           "--input", png, "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--output", out] + extra
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"FAIL {name}: ballast predict exited {run.returncode}: {run.stderr.strip()}")
        return False
    got = torch.tensor([[float(v) for v in line.split(",")] for line in open(out).read().split()], dtype=torch.float64)
    x = torch.cat([pixels, extra_pixels.permute(2, 0, 1).unsqueeze(0)]).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model(x).double()
    err = ((got - want).abs().max() / want.abs().max()).item() if got.shape == want.shape else float("inf")
    ok = err < 1e-4
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {got.shape[0]} images, max relative difference {err:.2e}")
    return ok


def main():
    ballast = os.path.abspath(sys.argv[1])
    models = [("resnet20", []), ("resnet32", []), ("resnet32_bbn", []), ("convnet3", []), ("vit_tiny", ["--patch", "4", "--image-size", "32"])]
    try:
        import torchvision  # noqa: F401
        models.append(("resnet18_cifar", []))
    except ImportError:
        print("skipped resnet18_cifar: python3-torchvision is not installed")
    with tempfile.TemporaryDirectory() as workdir:
        results = [check(ballast, name, workdir, extra) for name, extra in models]
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
