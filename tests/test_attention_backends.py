"""Importing the package (as fairseq imports a user module) leaves torch's cuDNN attention as it was; the run's
COLLAB_FAIRSEQ_CUDNN_ATTENTION switches it, and a bad value fails at import naming the variable."""

import os
import subprocess
import sys

import pytest

from collab_fairseq.attention_backends import CUDNN_ATTENTION_ENV
from tests.helpers import USER_DIR

IMPORT_AS_FAIRSEQ = (
    "import argparse, sys, torch; from fairseq import utils; "
    "torch.backends.cuda.enable_cudnn_sdp(sys.argv[1] == 'on'); "
    f"utils.import_user_module(argparse.Namespace(user_dir={USER_DIR!r})); "
    "print('cudnn attention', torch.backends.cuda.cudnn_sdp_enabled())"
)


def import_user_module(before, value):
    env = {k: v for k, v in os.environ.items() if k != CUDNN_ATTENTION_ENV}
    if value is not None:
        env[CUDNN_ATTENTION_ENV] = value
    return subprocess.run(
        [sys.executable, "-c", IMPORT_AS_FAIRSEQ, before], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("before", ["on", "off"])
def test_importing_the_package_leaves_cudnn_attention_as_it_was(before):
    proc = import_user_module(before, None)
    assert f"cudnn attention {before == 'on'}" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("value, enabled", [("0", False), ("1", True)])
def test_the_runs_variable_switches_cudnn_attention(value, enabled):
    proc = import_user_module("off" if enabled else "on", value)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"cudnn attention {enabled}" in proc.stdout


def test_bad_value_names_the_variable_and_the_fix():
    proc = import_user_module("on", "yes")
    assert proc.returncode != 0
    assert f"{CUDNN_ATTENTION_ENV}='yes': use 0 to switch torch's cuDNN attention off" in proc.stderr


def test_only_fairseqs_own_deprecation_warnings_are_silenced():
    code = (
        "import warnings, collab_fairseq\n"
        "warnings.warn('hydra.experimental.compose() is no longer experimental. Use hydra.compose()', UserWarning)\n"
        "warnings.warn('`torch.cuda.amp.autocast(args...)` is deprecated. Please use ...', FutureWarning)\n"
        "warnings.warn('a warning of the user', UserWarning)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "a warning of the user" in proc.stderr
    assert "no longer experimental" not in proc.stderr and "torch.cuda.amp" not in proc.stderr
