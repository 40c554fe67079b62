"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, against a
live orchestrator with scripted miners (the fixtures of tests/service).

Playwright downloads no browser here: it launches the Chromium at CHROMIUM (`make test` installs
Debian's `chromium` when it is missing). Screenshots go to the test's tmp_path and their paths
are printed (pytest -s shows them).
"""

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.service.conftest import chain, harness, make_harness  # noqa: F401 (fixtures)

CHROMIUM = Path(os.environ.get("KREWE_CHROMIUM", "/usr/bin/chromium"))
# Chromium's background connections are refused on a closed network; these keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (make test does), or set KREWE_CHROMIUM"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()
