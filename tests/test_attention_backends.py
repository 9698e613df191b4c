"""Importing the user module as fairseq does (every training worker, fairseq-generate) switches cuDNN's
scaled-dot-product attention off, unless COLLAB_FAIRSEQ_CUDNN_ATTENTION=1; a bad value fails at import."""

import os
import subprocess
import sys

import pytest

from collab_fairseq.attention_backends import KEEP_CUDNN_ATTENTION_ENV
from tests.helpers import USER_DIR

IMPORT_AS_FAIRSEQ = (
    "import argparse, torch; from fairseq import utils; "
    f"utils.import_user_module(argparse.Namespace(user_dir={USER_DIR!r})); "
    "print('cudnn attention', torch.backends.cuda.cudnn_sdp_enabled())"
)


def import_user_module(value):
    env = {k: v for k, v in os.environ.items() if k != KEEP_CUDNN_ATTENTION_ENV}
    if value is not None:
        env[KEEP_CUDNN_ATTENTION_ENV] = value
    return subprocess.run(
        [sys.executable, "-c", IMPORT_AS_FAIRSEQ], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("value, enabled", [(None, False), ("0", False), ("1", True)])
def test_user_module_import_decides_cudnn_attention(value, enabled):
    proc = import_user_module(value)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"cudnn attention {enabled}" in proc.stdout


def test_bad_value_names_the_variable_and_the_fix():
    proc = import_user_module("yes")
    assert proc.returncode != 0
    assert f"{KEEP_CUDNN_ATTENTION_ENV}='yes': use 1" in proc.stderr
