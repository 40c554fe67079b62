"""krewe: an orchestrator for decentralized AI inference."""

from importlib.metadata import version

__version__ = version("krewe")
