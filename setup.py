"""Build script. Package metadata lives in pyproject.toml; this file adds the
compiled extension `sam_edge._C` (see csrc/)."""

from setuptools import setup

setup()
