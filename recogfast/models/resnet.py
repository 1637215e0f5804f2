"""ResNets with an attention module after each residual body, on torchvision's building blocks.

Placement (SPEC "Placement"): body = conv-bn-relu-conv-bn (BasicBlock) or the 1×1-3×3-1×1 bottleneck;
the attention module runs on the body's output (after ``bn2`` / ``bn3``), before the residual add;
then ``out = relu(attn(body) + shortcut(x))``. Every parameter outside ``attn`` / ``embedding`` has
torchvision's name and shape, so torchvision checkpoints load into the shared part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.resnet import ResNet as _TVResNet

from recogfast.nn import create_attention

STEMS = ("imagenet", "small")


class AttnBasicBlock(BasicBlock):
    """torchvision's BasicBlock with an optional ``attn`` module between ``bn2`` and the residual add."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + identity)


class AttnBottleneck(Bottleneck):
    """torchvision's Bottleneck with an optional ``attn`` module between ``bn3`` and the residual add."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + identity)


class ResNet(_TVResNet):
    """torchvision ResNet plus: a choice of stem, attention in every residual block, and an embedding head.

    Args:
        block: ``AttnBasicBlock`` or ``AttnBottleneck``.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        num_classes: size of the classifier ``fc``; ignored (no ``fc``) when `embedding_dim` is given.
        embedding_dim: adds ``embedding = Linear(features, embedding_dim)`` in place of ``fc``; its
            output is L2-normalised in eval mode (raw in train mode, where the loss normalises).
        stem: ``"imagenet"`` (7×7 stride-2 conv + max-pool, torchvision's) or ``"small"`` (3×3 stride-1
            conv, no max-pool: for 32×32 / 64×64 inputs).
        attn: attention name for :func:`recogfast.nn.create_attention`, or None.
        attn_impl: ``"auto" | "fused" | "reference"``, passed to every attention module.
    """

    def __init__(
        self,
        block,
        layers,
        num_classes: int = 1000,
        embedding_dim: int | None = None,
        stem: str = "imagenet",
        attn: str | None = None,
        attn_impl: str = "auto",
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
    ):
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(map(repr, STEMS))}, got {stem!r}")
        super().__init__(
            block,
            layers,
            num_classes=num_classes,
            groups=groups,
            width_per_group=width_per_group,
            zero_init_residual=zero_init_residual,
        )
        self.stem = stem
        self.attn_name = attn
        self.num_features = self.fc.in_features
        if stem == "small":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()
        if attn is not None:
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                for blk in stage:
                    channels = blk.bn3.num_features if isinstance(blk, Bottleneck) else blk.bn2.num_features
                    blk.attn = create_attention(attn, channels, impl=attn_impl)
        self.embedding_dim = embedding_dim
        if embedding_dim is not None:
            del self.fc
            self.embedding = nn.Linear(self.num_features, embedding_dim)
            self.num_classes = None
        else:
            self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the head: [B, 512] (ResNet-18) or [B, 2048] (bottleneck ResNets)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if self.embedding_dim is None:
            return self.fc(features)
        e = self.embedding(features)
        return e if self.training else F.normalize(e.float(), dim=1).to(e.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
