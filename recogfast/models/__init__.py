"""Model zoo: ``create_model(name, ...)`` and ``list_models()``.

ResNets keep torchvision's state-dict names (``conv1``, ``layer1.0.conv1``, ``fc``...), with the
attention module of each residual block under ``layerX.Y.attn``; ``weights=PATH`` loads a torchvision
checkpoint into the shared part and reports what was new.
"""

from recogfast.models.registry import create_model, list_models, model_info, register_model
from recogfast.models.resnet import AttnBasicBlock, AttnBottleneck, ResNet
from recogfast.models.tinynet import TinyNet
from recogfast.models.weights import from_timm, load_weights

__all__ = [
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "ResNet",
    "AttnBasicBlock",
    "AttnBottleneck",
    "TinyNet",
    "load_weights",
    "from_timm",
]
