"""Settings: flags override the environment, which overrides the file; bad values name the setting."""

from pathlib import Path

import pytest

from krewe.miner.config import MinerSettings
from krewe.orchestrator.config import OrchestratorSettings
from krewe.settings import SettingsError, load_settings


def test_flags_override_the_environment_which_overrides_the_file(tmp_path: Path) -> None:
    file = tmp_path / "krewe.toml"
    file.write_text(
        'replicas = 5\nthreshold = 3\ntail = 2\napi_keys = ["a", "b"]\n[model_rewards]\n"m1" = 7\n'
    )
    settings = load_settings(OrchestratorSettings, file=file, environ={}, flags={})
    assert (settings.replicas, settings.threshold, settings.tail, settings.api_keys) == (5, 3, 2, ["a", "b"])
    assert settings.reward_for("m1") == 7 and settings.reward_for("other") == 0
    environ = {"KREWE_THRESHOLD": "4", "KREWE_API_KEYS": "x, y", "KREWE_MODEL_REWARDS": "m1=9,m2=1"}
    settings = load_settings(OrchestratorSettings, file=file, environ=environ, flags={})
    assert (settings.replicas, settings.threshold, settings.api_keys) == (5, 4, ["x", "y"])
    assert settings.model_rewards == {"m1": 9, "m2": 1}
    settings = load_settings(
        OrchestratorSettings, file=file, environ=environ, flags={"threshold": "2", "tail": None}
    )
    assert (settings.threshold, settings.tail) == (2, 2)  # an unset flag leaves the lower layers alone


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"KREWE_REPLICAS": "three"}, "replicas: invalid literal"),
        ({"KREWE_REPLICAS": "2", "KREWE_THRESHOLD": "3"}, "threshold: 3 is more than replicas (2)"),
        ({"KREWE_PORT": "70000"}, "port: 70000 is not a TCP port"),
        ({"KREWE_MODEL_REWARDS": "m1"}, "model_rewards: expected key=value pairs"),
        (
            {"KREWE_DISTRIBUTOR_ADDRESS": "0x12"},
            "distributor_address: '0x12' is not a 0x-prefixed 20-byte address",
        ),
        ({"KREWE_MODEL_REWARDS": "m1=1.5"}, "model_rewards: invalid literal"),
        ({"KREWE_SETTLEMENT_CONFIRMATIONS": "-1"}, "settlement_confirmations: cannot be negative"),
        ({"KREWE_CHAIN_LOG_RANGE": "0"}, "chain_log_range: must be positive, not 0"),
        ({"KREWE_MAX_FEE_GWEI": "0"}, "max_fee_gwei: must be positive, not 0"),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_settings(OrchestratorSettings, environ=environ)


def test_the_miner_reads_its_own_prefix() -> None:
    settings = load_settings(
        MinerSettings,
        environ={"KREWE_MINER_MAX_CONCURRENCY": "9", "KREWE_MAX_CONCURRENCY": "1"},
        env_prefix="KREWE_MINER_",
    )
    assert settings.max_concurrency == 9


def test_secrets_stay_out_of_the_settings_repr() -> None:
    assert "s3cret" not in repr(OrchestratorSettings(api_keys=["s3cret"]))
    assert "s3cret" not in repr(MinerSettings(backend_api_key="s3cret"))
