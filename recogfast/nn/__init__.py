"""Drop-in modules backed by the fused ops."""

from recogfast.nn.cubs import CUBSBlock, CUBSBlock1, CUBSBlock2
from recogfast.nn.factory import attention_names, create_attention
from recogfast.nn.se import SEBlock

__all__ = ["SEBlock", "CUBSBlock1", "CUBSBlock2", "CUBSBlock", "create_attention", "attention_names"]
