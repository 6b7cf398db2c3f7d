"""Sekisho (関所): an identity-aware zero-trust gateway for Japanese local governments."""

from sekisho import _build

__version__ = "0.1.0.dev0"

_build.check()  # never run compiled code older than the source tree
