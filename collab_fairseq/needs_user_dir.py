"""The argparse arguments a transformer_collab checkpoint stores, under a name that says what loading it needs.

fairseq stores a legacy model's arguments (``cfg.model``) as an ``argparse.Namespace``.
``transformer_collab`` models store theirs as :class:`TransformerCollabArgs`, defined in
this module, so the checkpoint names the user module it needs. Opened without
``--user-dir collab_fairseq``, torch's safe loading fails with
"Unsupported global: GLOBAL collab_fairseq.needs_user_dir.TransformerCollabArgs";
full unpickling imports this package instead, which registers the model.
"""

import argparse


class TransformerCollabArgs(argparse.Namespace):
    """argparse.Namespace of a transformer_collab model. Load with ``--user-dir collab_fairseq``."""


def mark_collab_args(args) -> None:
    """Make a plain argparse.Namespace a TransformerCollabArgs in place (what checkpoints will store)."""
    if type(args) is argparse.Namespace:
        args.__class__ = TransformerCollabArgs
