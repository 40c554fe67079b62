"""The ledger on each of its stores, for the suites that hold both to the same rules."""

from pathlib import Path

import pytest

from tests.support.ledgers import LedgerOpener


@pytest.fixture(params=["sqlite", "redis"])
def ledger_opener(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerOpener:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    return LedgerOpener(request.param, tmp_path / "ledger.db", url)
