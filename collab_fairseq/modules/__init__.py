from .collaborative_attention import CollaborativeMultiheadAttention  # noqa: F401
from .transformer_collab_layer import TransformerCollabDecoderLayer, TransformerCollabEncoderLayer  # noqa: F401
