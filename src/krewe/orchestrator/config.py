"""The orchestrator's settings: every one, its default, and what it means.

Set them in a TOML file (`krewe orchestrator --config FILE`), as `KREWE_<NAME>` environment
variables, or as `--name` flags; flags win over the environment, which wins over the file.
"""

from dataclasses import dataclass
from pathlib import Path

from krewe.settings import SettingsError, setting

__all__ = ["MAX_REPLICAS", "OrchestratorSettings"]

MAX_REPLICAS = 16


@dataclass(frozen=True)
class OrchestratorSettings:
    host: str = setting("127.0.0.1", "address to listen on (HTTP API and miner WebSockets, one port)")
    port: int = setting(8000, "port to listen on")
    public_url: str = setting(
        "", "URL miners connect to, signed into the login challenge (empty: http://HOST:PORT)"
    )
    replicas: int = setting(3, "miners each job is sent to")
    threshold: int = setting(2, "matching answers needed for a verdict")
    tail: int = setting(1, "replicas drawn from the lower-ranked half of the miners")
    homogeneous: bool = setting(
        True,
        "every replica of a job comes from one engine class of its model (answers agree only within one)",
    )
    redispatch_max: int = setting(2, "extra rounds, one more miner each, after a job ends without consensus")
    job_timeout_ms: int = setting(30_000, "default deadline of a job")
    max_job_timeout_ms: int = setting(300_000, "largest deadline a client may ask for")
    heartbeat_s: float = setting(10.0, "seconds between WebSocket pings to each miner")
    heartbeat_misses: int = setting(3, "missed pongs after which a miner is disconnected")
    auth_timeout_s: float = setting(10.0, "seconds a new connection has to log in")
    max_violations: int = setting(5, "protocol violations after login before a miner is disconnected (4429)")
    max_frame_bytes: int = setting(
        1_048_576, "largest WebSocket frame from a miner (larger closes with 1009)"
    )
    max_body_bytes: int = setting(1_048_576, "largest HTTP request body (larger gets 413)")
    http_header_timeout_s: float = setting(
        10.0,
        "seconds a connection has to send a request's headers, from connecting or from its last "
        "response (then it is closed; idle keep-alive connections too)",
    )
    http_body_timeout_s: float = setting(
        30.0, "seconds a request's body has to arrive once its headers have (then 408)"
    )
    max_connections: int | None = setting(
        None,
        "most connections open at once, HTTP and WebSocket (more get 503 and are closed); "
        "unset: the open-file limit less 100",
    )
    model_rewards: dict[str, int] = setting(
        {}, "credit per agreeing miner per job by model id, in wei; a model not listed earns nothing"
    )
    min_credit_replicas: int | None = setting(
        None, "distinct miners a job must be sent to before anyone is credited for it (unset: replicas)"
    )
    min_credit_threshold: int | None = setting(
        None, "agreeing miners a job needs before anyone is credited for it (unset: threshold)"
    )
    settlement_window_s: float = setting(60.0, "seconds between settlements")
    max_batch: int = setting(500, "most workers in one batchDistributeRewards")
    receipt_timeout_s: float = setting(60.0, "seconds to wait for a settlement receipt before a fee bump")
    settlement_confirmations: int = setting(
        2, "blocks a batch's RewardsDistributed event must be deep before the batch counts as paid"
    )
    chain_log_range: int = setting(5000, "most blocks in one event search (eth_getLogs) of settlement")
    max_fee_gwei: int = setting(
        500, "highest max fee per gas of a settlement transaction, in gwei; fee bumps stop there"
    )
    rpc_url: str = setting("http://127.0.0.1:8545", "JSON-RPC URL of the settlement chain")
    registry_address: str = setting("", "WorkerRegistry contract address")
    distributor_address: str = setting("", "RewardDistributor contract address")
    chain_from_block: int = setting(
        0, "block the distributor was deployed in: settlement's event searches never start before it"
    )
    registry_cache_s: float = setting(30.0, "seconds a registry answer (isActive) is reused")
    registry_timeout_s: float = setting(
        3.0, "longest wait for a registry read during a login (then 1013 registry_unavailable)"
    )
    key_file: Path | None = setting(None, "encrypted keystore (V3 JSON) of the orchestrator's key")
    key_password_file: Path | None = setting(None, "file holding the keystore's password")
    key_password_env: str = setting(
        "KREWE_KEY_PASSWORD", "environment variable holding the keystore's password"
    )
    dev_key_env: str = setting(
        "KREWE_DEV_KEY", "environment variable with a raw hex key (development chains only)"
    )
    data_dir: Path = setting(Path("krewe-data"), "directory of the ledger and the job records (SQLite)")
    store: str = setting(
        "sqlite",
        "where shared state lives: sqlite (one instance, in data_dir) or a redis://HOST:PORT/DB URL "
        "that several instances share (docs/operations.md)",
    )
    instance_id: str = setting(
        "", "this instance's name among those sharing a Redis store (empty: HOST:PORT)"
    )
    redis_allow_volatile: bool = setting(
        False,
        "run the ledger on a Redis without appendonly yes and appendfsync always, which can lose "
        "acknowledged credits in a crash (tests only)",
    )
    redis_min_replicas: int = setting(
        0, "Redis replicas each ledger write must reach (WAIT) before it is acknowledged"
    )
    settlement_lease_s: float = setting(
        10.0, "seconds a settler's lease lasts unrenewed; another instance takes over within twice that"
    )
    job_retention_s: float = setting(86_400.0, "seconds job records are kept")
    api_keys: list[str] = setting(
        [], "client API keys (Bearer); empty: the API is open (loopback use only)", secret=True
    )
    admin_api_keys: list[str] = setting(
        [],
        "operator keys (Bearer, or HTTP Basic password): with any key set, the dashboard, /v1/events, "
        "/v1/workers, /v1/ledger, /v1/settlements and statements take one",
        secret=True,
    )
    rate_limit_per_s: float = setting(100.0, "requests per second per API key")
    rate_limit_burst: int = setting(200, "burst size per API key")
    shutdown_grace_s: float = setting(10.0, "seconds in-flight jobs get to finish on SIGTERM")
    seed: int | None = setting(None, "seed for replica selection (audits and tests); unset: random")

    def __post_init__(self) -> None:
        positive = (
            "port", "replicas", "threshold", "job_timeout_ms", "max_job_timeout_ms", "heartbeat_s",
            "heartbeat_misses", "auth_timeout_s", "max_violations", "max_frame_bytes", "max_body_bytes",
            "settlement_window_s", "max_batch", "receipt_timeout_s", "chain_log_range", "max_fee_gwei",
            "rate_limit_per_s", "rate_limit_burst", "job_retention_s", "shutdown_grace_s",
            "registry_timeout_s", "http_header_timeout_s", "http_body_timeout_s", "settlement_lease_s",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be positive, not {getattr(self, name)}")
        if not 0 < self.port < 65536:
            raise SettingsError(f"port: {self.port} is not a TCP port")
        if self.threshold > self.replicas:
            raise SettingsError(f"threshold: {self.threshold} is more than replicas ({self.replicas})")
        if not 0 <= self.tail <= self.replicas:
            raise SettingsError(f"tail: must be between 0 and replicas ({self.replicas}), not {self.tail}")
        if self.store != "sqlite" and not self.store.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"store: {self.store!r} is neither sqlite nor a redis:// URL")
        for name in (
            "redispatch_max", "registry_cache_s", "chain_from_block", "settlement_confirmations",
            "redis_min_replicas",
        ):  # fmt: skip
            if getattr(self, name) < 0:
                raise SettingsError(f"{name}: cannot be negative")
        if self.max_connections is not None and self.max_connections < 1:
            raise SettingsError(f"max_connections: must be positive, not {self.max_connections}")
        for name in ("min_credit_replicas", "min_credit_threshold"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_REPLICAS:
                raise SettingsError(f"{name}: must be between 1 and {MAX_REPLICAS}, not {value}")
        if any(wei < 0 for wei in self.model_rewards.values()):
            raise SettingsError("model_rewards: rewards cannot be negative")
        if self.job_timeout_ms > self.max_job_timeout_ms:
            raise SettingsError(f"job_timeout_ms: above max_job_timeout_ms ({self.max_job_timeout_ms})")
        for name in ("registry_address", "distributor_address"):
            value = getattr(self, name)
            if value and not (value.startswith("0x") and len(value) == 42):
                raise SettingsError(f"{name}: {value!r} is not a 0x-prefixed 20-byte address")

    @property
    def shared(self) -> bool:
        """State lives in Redis, shared with other instances."""
        return self.store != "sqlite"

    @property
    def instance(self) -> str:
        return self.instance_id or f"{self.host}:{self.port}"

    @property
    def connect_url(self) -> str:
        base = self.public_url or f"http://{self.host}:{self.port}"
        return base.replace("http", "ws", 1).rstrip("/") + "/v1/workers/connect"

    def reward_for(self, model: str) -> int:
        return self.model_rewards.get(model, 0)
