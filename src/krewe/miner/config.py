"""The miner's settings: a TOML file, `KREWE_MINER_<NAME>` environment variables, or flags."""

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from krewe.protocol.messages import MAX_CONCURRENCY, MAX_ENGINE_CHARS, TASKS
from krewe.settings import SettingsError, setting

__all__ = ["MinerSettings"]


@dataclass(frozen=True)
class MinerSettings:
    orchestrator_url: list[str] = setting(
        ["ws://127.0.0.1:8000/v1/workers/connect"],
        "the orchestrators' WebSocket URLs, tried in order: the agent moves to the next when its "
        "orchestrator goes away",
    )
    key_file: Path | None = setting(None, "encrypted keystore (V3 JSON) of the miner's key")
    key_password_file: Path | None = setting(None, "file holding the keystore's password")
    key_password_env: str = setting("KREWE_MINER_KEY_PASSWORD", "variable holding the keystore's password")
    dev_key_env: str = setting("KREWE_MINER_DEV_KEY", "variable with a raw hex key (development chains only)")
    backend: str = setting("local", "where answers come from: 'local' (the built-in models) or 'openai'")
    models: list[str] = setting([], "model ids to serve (empty: what the backend offers)")
    base_url: str = setting("http://127.0.0.1:11434/v1", "the OpenAI-compatible server (openai backend)")
    tasks: list[str] = setting(
        ["chat", "completion"], "tasks offered for each model (openai backend): chat, completion, embedding"
    )
    engine: str = setting(
        "",
        "engine class of the openai backend's models: what decides their output bytes, e.g. "
        "'vllm-0.6.3/qwen2.5-0.5b-bf16/h100' (empty: openai-compatible/<base_url host>)",
    )
    backend_api_key: str = setting(
        "", "API key for the OpenAI-compatible server, if it needs one", secret=True
    )
    backend_timeout_s: float = setting(120.0, "longest wait for the backend on one job")
    seed: int = setting(0, "decoding seed forced on the openai backend (with temperature 0)")
    max_concurrency: int = setting(4, "jobs run at once (at most 1024); more are rejected as busy")
    reconnect_min_s: float = setting(0.5, "first reconnect delay")
    reconnect_max_s: float = setting(30.0, "longest reconnect delay")
    healthy_session_s: float = setting(60.0, "a session this long resets the reconnect delay")
    shutdown_grace_s: float = setting(10.0, "seconds running jobs get to finish on SIGTERM")
    rpc_url: str = setting(
        "http://127.0.0.1:8545", "JSON-RPC URL of the chain (register, status, claim, exit)"
    )
    registry_address: str = setting("", "WorkerRegistry contract address")
    distributor_address: str = setting("", "RewardDistributor contract address")

    @property
    def api_url(self) -> str:
        """The first orchestrator's HTTP API (statements), on the same host and port as its
        `orchestrator_url`; orchestrators that share their state all give the same statement."""
        parts = urlsplit(self.orchestrator_url[0])
        scheme = "https" if parts.scheme == "wss" else "http"
        return f"{scheme}://{parts.netloc}{parts.path.removesuffix('/v1/workers/connect').rstrip('/')}"

    def __post_init__(self) -> None:
        if self.backend not in ("local", "openai"):
            raise SettingsError(f"backend: must be 'local' or 'openai', not {self.backend!r}")
        if not self.orchestrator_url:
            raise SettingsError("orchestrator_url: at least one URL")
        for url in self.orchestrator_url:
            if not url.startswith(("ws://", "wss://")):
                raise SettingsError(f"orchestrator_url: must start with ws:// or wss://, not {url!r}")
        if len(set(self.orchestrator_url)) < len(self.orchestrator_url):
            raise SettingsError(f"orchestrator_url: lists a URL twice: {self.orchestrator_url!r}")
        for name in ("max_concurrency", "reconnect_min_s", "reconnect_max_s", "backend_timeout_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be positive, not {getattr(self, name)}")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise SettingsError("reconnect_min_s: above reconnect_max_s")
        if self.max_concurrency > MAX_CONCURRENCY:
            raise SettingsError(f"max_concurrency: at most {MAX_CONCURRENCY}, not {self.max_concurrency}")
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown or not self.tasks:
            raise SettingsError(f"tasks: a non-empty list of {', '.join(TASKS)}, not {self.tasks!r}")
        if len(self.engine) > MAX_ENGINE_CHARS or not all(" " <= char <= "~" for char in self.engine):
            raise SettingsError(
                f"engine: at most {MAX_ENGINE_CHARS} printable ASCII characters, not {self.engine!r}"
            )
