from .exact import copy_from_multihead_attention  # noqa: F401
