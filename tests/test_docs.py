"""The docs describe what the code does: every setting is in the README's configuration table."""

import dataclasses
from pathlib import Path

from krewe.orchestrator.config import OrchestratorSettings

ROOT = Path(__file__).parent.parent


def test_every_orchestrator_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    for field in dataclasses.fields(OrchestratorSettings):
        assert f"| `{field.name}` | `KREWE_{field.name.upper()}` |" in readme, field.name
