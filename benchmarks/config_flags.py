"""The benchmarks' --config NAME:FLAGS values: leading VAR=value words set the environment of that run."""

import os
import shlex


def split_env(flags: str):
    """'VAR=value --flag x' -> (os.environ with VAR=value, ['--flag', 'x'])."""
    env, words = dict(os.environ), shlex.split(flags)
    while words and "=" in words[0] and not words[0].startswith("-"):
        var, _, value = words.pop(0).partition("=")
        env[var] = value
    return env, words
