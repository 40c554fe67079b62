"""The service tests' chain and harness, for the adversarial tests."""

from tests.service.conftest import chain, harness, make_harness

__all__ = ["chain", "harness", "make_harness"]
