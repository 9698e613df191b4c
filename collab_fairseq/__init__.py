"""collab_fairseq: collaborative multi-head attention as a fairseq user module (``--user-dir collab_fairseq``).

Importing it registers the ``transformer_collab`` model and its architectures and the ``translation_fast`` task,
allowlists the objects fairseq checkpoints hold for torch's safe loading (fairseq's own ``torch.load`` refuses them
on torch >= 2.6, and importing the user module is the only hook that runs before it), and filters the deprecation
warnings that fairseq's own calls print (``fairseq_warnings.py``). Nothing else of torch or fairseq changes, unless
the run asks through ``COLLAB_FAIRSEQ_CUDNN_ATTENTION`` (``attention_backends.py``).
"""

from . import models  # noqa: F401  (registers transformer_collab and its architectures)
from . import tasks  # noqa: F401  (registers the translation_fast task)
from .attention_backends import apply_cudnn_attention_setting
from .fairseq_warnings import silence_fairseq_deprecations
from .safe_loading import allow_fairseq_checkpoints

allow_fairseq_checkpoints()
silence_fairseq_deprecations()
apply_cudnn_attention_setting()

__version__ = "0.1.0"
