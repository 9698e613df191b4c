from .transformer_collab import TransformerCollabModel  # noqa: F401
