"""Sekisho (関所): an identity-aware zero-trust gateway for Japanese local governments."""

__version__ = "0.1.0.dev0"
