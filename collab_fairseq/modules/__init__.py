from .collaborative_attention import CollaborativeMultiheadAttention  # noqa: F401
from .transformer_collab_layer import CollabTransformerDecoderLayer, CollabTransformerEncoderLayer  # noqa: F401
