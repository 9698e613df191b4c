# Kept for `pip install -e .` with old pip; metadata lives in pyproject.toml.
from setuptools import setup

setup()
