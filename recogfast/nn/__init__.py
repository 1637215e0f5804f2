"""Drop-in modules backed by the fused ops."""

from recogfast.nn.factory import attention_names, create_attention
from recogfast.nn.se import SEBlock

__all__ = ["SEBlock", "create_attention", "attention_names"]
