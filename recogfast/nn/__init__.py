"""Drop-in modules backed by the fused ops."""

from recogfast.nn.se import SEBlock

__all__ = ["SEBlock"]
