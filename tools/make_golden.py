#!/usr/bin/python3
"""Writes the golden fixtures that tests/test_golden.c compares ballast against.

Run with Debian's python3-torch:  /usr/bin/python3 tools/make_golden.py tests/fixtures
It builds a CIFAR ResNet-32 and a ViT block in plain PyTorch, fills every parameter and the input
with hashed pseudo-random values (the C test computes the same values, so no weight file is stored),
and records in F32: the logits/outputs and loss of a training-mode forward pass, every parameter's
gradient, and three SGD steps (losses, a prefix of every updated parameter, BatchNorm buffers).
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
from torch_models import Block, CifarResNet  # noqa: E402

PREFIX = 64  # elements of each parameter kept after the SGD steps


MASK = (1 << 64) - 1


def mix64(z):
    """The splitmix64 finalizer, on Python ints (the C test uses the same function)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def hashed_uniform(stream, count):
    """count values in [-1, 1): element i of `stream` is mix64(stream << 32 | i) scaled.
    Pseudo-random rather than smooth, so no activation sits on a ReLU kink by construction."""
    base = stream << 32
    return torch.tensor([(mix64(base | i) >> 11) * 2.0 ** -52 - 1.0 for i in range(count)], dtype=torch.float64)


def formula_init(model):
    """Parameter k (in sorted name order): uniform values with a sensible scale per kind of tensor."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, name in enumerate(sorted(params)):
            p = params[name]
            u = hashed_uniform(k + 1, p.numel())
            if p.dim() >= 2:
                values = math.sqrt(3.0 / (p.numel() / p.shape[0])) * u
            elif name.endswith("weight"):
                values = 1.0 + 0.1 * u
            else:
                values = 0.1 * u
            p.copy_(values.reshape(p.shape).to(p.dtype))


def formula_input(shape):
    return hashed_uniform(1000, math.prod(shape)).reshape(shape).float()


def record(model, x, loss_fn, lr, momentum, weight_decay, prefix):
    """Forward/backward once, then three SGD steps; returns the tensors to store."""
    out = {}
    x = x.clone().requires_grad_(True)
    y = model(x)
    loss = loss_fn(y)
    loss.backward()
    out[f"{prefix}output"] = y.detach()
    out[f"{prefix}loss"] = loss.detach().reshape(1)
    out[f"{prefix}input_grad"] = x.grad.detach()
    for name, p in model.named_parameters():
        out[f"{prefix}grad.{name}"] = p.grad.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = loss_fn(model(x.detach()))
        losses.append(loss.item())
        loss.backward()
        opt.step()
    out[f"{prefix}sgd_losses"] = torch.tensor(losses, dtype=torch.float32)
    for name, p in model.named_parameters():
        out[f"{prefix}after_sgd.{name}"] = p.detach().reshape(-1)[:PREFIX].clone()
    for name, b in model.named_buffers():
        out[f"{prefix}after_sgd.{name}"] = b.detach().clone()
    return out


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(target, exist_ok=True)
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False  # plain reference kernels

    resnet = CifarResNet(32, 10).train()
    formula_init(resnet)
    x = formula_input((8, 3, 32, 32))
    labels = torch.arange(8) % 10
    tensors = record(resnet, x, lambda logits: F.cross_entropy(logits, labels), 0.02, 0.9, 5e-4, "resnet32.")

    block = Block(64, 4).train()
    formula_init(block)
    xb = formula_input((2, 17, 64))
    tensors.update(record(block, xb, lambda y: (y * y).mean(), 0.05, 0.9, 0.0, "vit_block."))

    path = os.path.join(target, "golden.safetensors")
    safetensors_io.save(tensors, path, {"generator": "tools/make_golden.py", "torch": torch.__version__})
    print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
