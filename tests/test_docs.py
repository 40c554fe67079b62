"""The docs describe what the code does: every setting is in the README's configuration table."""

import dataclasses
from pathlib import Path

from krewe.miner.config import MinerSettings
from krewe.orchestrator.config import OrchestratorSettings

ROOT = Path(__file__).parent.parent


def test_every_orchestrator_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    for field in dataclasses.fields(OrchestratorSettings):
        assert f"| `{field.name}` | `KREWE_{field.name.upper()}` |" in readme, field.name


def test_every_miner_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    for field in dataclasses.fields(MinerSettings):
        assert f"| `{field.name}` | `KREWE_MINER_{field.name.upper()}` |" in readme, field.name


def test_the_readme_opens_with_the_two_commands() -> None:
    commands = [line.split("#")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()[:12]]
    assert "make demo" in commands and "make test" in commands
