"""PyTorch twins of ballast's models, for golden fixtures and side-by-side benchmarks.

Parameter names match ballast's (and the reference code's): the common CIFAR ResNet, BBN's ResNet-32,
timm's ViT, torchvision's ResNet-18 with a 32x32 stem.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(out + short)


def cifar_stages(blocks):
    """The three 16/32/64-channel stages of the CIFAR ResNets, `blocks` basic blocks each."""
    planes_in, layers = 16, []
    for planes, stride, n in zip((16, 32, 64), (1, 2, 2), blocks):
        stage = []
        for b in range(n):
            stage.append(BasicBlock(planes_in, planes, stride if b == 0 else 1))
            planes_in = planes
        layers.append(nn.Sequential(*stage))
    return layers


class CifarResNet(nn.Module):
    """The common CIFAR ResNet (option-A shortcuts), names conv1/bn1/layerN.i/linear."""

    def __init__(self, depth=32, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1, self.layer2, self.layer3 = cifar_stages((n, n, n))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (D // self.heads) ** -0.5
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block with timm's parameter names."""

    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BBNResNet32(nn.Module):
    """BBN's ResNet-32: 5/5/4 blocks, then the parallel cb_block and rb_block on layer3's output,
    concatenated (128 features), and the classifier fc."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1, self.layer2, self.layer3 = cifar_stages((5, 5, 4))
        self.cb_block = BasicBlock(64, 64, 1)
        self.rb_block = BasicBlock(64, 64, 1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.cat([self.cb_block(out), self.rb_block(out)], 1)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class ViT(nn.Module):
    """timm's VisionTransformer layout: patch_embed.proj, cls_token, pos_embed, blocks, norm, head."""

    def __init__(self, image_size=32, patch=4, dim=192, depth=12, heads=3, num_classes=10):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        tokens = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class ConvNet(nn.Module):
    """The dataset-distillation ConvNet: depth x [conv3x3 (bias) -> GroupNorm(C, C) -> ReLU -> avgpool 2],
    then a linear "classifier"; names features.{4d}, features.{4d+1} as in the original nn.Sequential."""

    def __init__(self, channels=3, width=128, depth=3, image_size=32, num_classes=10):
        super().__init__()
        layers, side = [], image_size
        for d in range(depth):
            pad = 3 if channels == 1 and d == 0 else 1
            layers += [nn.Conv2d(channels if d == 0 else width, width, 3, padding=pad),
                       nn.GroupNorm(width, width, affine=True), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
            side = (side + 2 * pad - 2) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * side * side, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def resnet18_cifar(num_classes=10):
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32x32 images."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build(name, num_classes=10):
    """A model by ballast name."""
    if name.startswith("resnet") and name[6:].isdigit() and name != "resnet18":
        return CifarResNet(int(name[6:]), num_classes)
    if name == "resnet18_cifar":
        return resnet18_cifar(num_classes)
    if name == "resnet32_bbn":
        return BBNResNet32(num_classes)
    if name == "convnet3":
        return ConvNet(num_classes=num_classes)
    sizes = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}
    if name in sizes:
        dim, heads = sizes[name]
        return ViT(32, 4, dim, 12, heads, num_classes)
    raise ValueError(f"no PyTorch twin for model '{name}'")
