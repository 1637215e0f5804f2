"""TinyNet: the course's own small CNN for task 1 (Tiny ImageNet, 64×64, 200 classes).

Four stages of two 3×3 conv-BN-ReLU layers (32, 64, 128, 256 channels), each followed by 2×2
max-pooling except the last, then a 3×3 conv to 512 channels, global average pooling, dropout and a
linear classifier (about 2.5 M parameters). Built for 32×32–64×64 inputs; larger inputs work too
(the pooling is global).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class TinyNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 200,
        embedding_dim: int | None = None,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        num_features: int = 512,
        dropout: float = 0.2,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers += _conv_bn_relu(cin, w) + _conv_bn_relu(w, w)
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        layers += _conv_bn_relu(cin, num_features)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.num_features = num_features
        self.embedding_dim = embedding_dim
        if embedding_dim is None:
            self.fc = nn.Linear(num_features, num_classes)
            self.num_classes = num_classes
        else:
            self.embedding = nn.Linear(num_features, embedding_dim)
            self.num_classes = None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        features = self.dropout(features)
        if self.embedding_dim is None:
            return self.fc(features)
        e = self.embedding(features)
        return e if self.training else F.normalize(e.float(), dim=1).to(e.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
