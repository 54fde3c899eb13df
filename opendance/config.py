"""The one settings object. Only this module reads the environment.

CLI flags, ``OPENDANCE_*`` variables and the models TOML file fill the same ``Settings``;
``create_app(settings)`` builds everything from it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .domain import OUTPUT_SIZES, Mode
from .engines.lora import LoraAdapter, resolve_fused
from .engines.options import check_options

MiB = 1024 * 1024

CommaList = Annotated[list[str], NoDecode]


class EngineSpec(BaseModel):
    """How one model name makes one mode: the engine and its own options.

    ``engine`` is a registered short name (``preview``, ``wan``, ``ltx``, ``ltx2``, ``scenario``)
    or an import path ``package.module:Class``. Every other key is handed to the engine, which
    checks it (``checkpoint``, ``steps``, ``guidance``, ``fps``, ``dtype``, ``cache`` ...).
    """

    model_config = ConfigDict(extra="allow")

    engine: str = "preview"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(BaseModel):
    """One model name of the API: its output resolution and, per mode, how it is made."""

    model_config = ConfigDict(extra="forbid")

    name: str
    resolution: Literal["480p", "720p"]
    fps: int = Field(24, ge=8, le=60, description="frame rate of the output MP4")
    modes: dict[Mode, EngineSpec]
    devices_per_task: int = Field(
        1, ge=1, le=64, description="devices one task takes: a device group of this many ranks (torch.distributed)"
    )
    owned_by: str = "opendance"
    # LoRAs a request may ask for (extra_body.loras): the [loras.*] tables of the names the
    # file's ``allowed_loras`` lists.
    allowed_loras: dict[str, LoraAdapter] = Field(default_factory=dict)

    def size(self, aspect_ratio: str) -> tuple[int, int]:
        return OUTPUT_SIZES[self.resolution][aspect_ratio]


SEED_MODELS = ("jisudance2.0-480p", "jisudance2.0-720p", "jisudance2.0-fast-480p", "jisudance2.0-fast-720p")


def default_models() -> dict[str, ModelConfig]:
    """The four seed names, every mode on the preview engine (no weights configured)."""
    out = {}
    for name in SEED_MODELS:
        res = "720p" if name.endswith("720p") else "480p"
        out[name] = ModelConfig(name=name, resolution=res, modes={m: EngineSpec(engine="preview") for m in Mode})
    return out


def load_models(path: Path | None) -> dict[str, ModelConfig]:
    """Read the models TOML file.

    ::

        [models."jisudance2.0-480p"]
        resolution = "480p"
        fps = 24
        [models."jisudance2.0-480p".default]          # applies to every mode not listed
        engine = "preview"
        [models."jisudance2.0-480p".modes."image-to-video"]
        engine = "wan"
        checkpoint = "/models/Wan2.1-I2V-14B-480P-Diffusers"
        steps = 30

    A model lists the modes it can do: ``modes`` entries, plus every mode through ``default``.
    Without a file, the four seed names run on the preview engine.
    """
    if path is None:
        return default_models()
    with open(path, "rb") as f:
        data = tomllib.load(f)
    library = load_loras(data.get("loras") or {})
    models: dict[str, ModelConfig] = {}
    for name, raw in (data.get("models") or {}).items():
        raw = dict(raw)
        default = raw.pop("default", None)
        modes_raw = raw.pop("modes", {}) or {}
        raw["allowed_loras"] = _allowed_loras(raw.get("allowed_loras", []), library, f"models.{name}")
        default, modes_raw = _fused_loras(default, modes_raw, library, f"models.{name}")
        modes: dict[Mode, EngineSpec] = {}
        if default is not None:
            modes = {m: EngineSpec(**default) for m in Mode}
        for mode_name, spec in modes_raw.items():
            try:
                mode = Mode(mode_name)
            except ValueError:
                raise ValueError(f"models.{name}.modes: unknown mode {mode_name!r}; one of {[m.value for m in Mode]}") from None
            modes[mode] = EngineSpec(**{**(default or {}), **spec})
        if not modes:
            raise ValueError(f"models.{name}: no modes configured (add a [default] or [modes.*] table)")
        for mode, spec in modes.items():
            try:
                check_options(spec.engine, {"engine": spec.engine, **spec.options}, mode.value)
            except ValueError as exc:
                raise ValueError(f"models.{name} ({mode.value}, engine {spec.engine}): {exc}") from None
        no_lora = sorted({spec.engine for spec in modes.values() if spec.engine in ("preview", "relay", "scenario")})
        if raw["allowed_loras"] and no_lora:
            raise ValueError(f"models.{name}.allowed_loras: the {', '.join(no_lora)} engine applies no LoRA")
        models[name] = ModelConfig(name=name, modes=modes, **raw)
        _check_context_parallel(models[name])
    if not models:
        raise ValueError(f"{path}: no [models.*] tables")
    return models


def load_loras(raw: dict[str, Any]) -> dict[str, LoraAdapter]:
    """The ``[loras."name"]`` tables (``engines.lora.LoraAdapter``)."""
    out = {}
    for name, table in raw.items():
        try:
            out[name] = LoraAdapter.model_validate(table)
        except ValueError as exc:
            raise ValueError(f"loras.{name}: {exc}") from None
    return out


def _allowed_loras(names: Any, library: dict[str, LoraAdapter], where: str) -> dict[str, LoraAdapter]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}.allowed_loras must be a list of LoRA names (from [loras.*])")
    unknown = [n for n in names if n not in library]
    if unknown:
        raise ValueError(f"{where}.allowed_loras: no [loras.*] table for {', '.join(unknown)}")
    return {n: library[n] for n in names}


def _fused_loras(default: dict | None, modes: dict, library: dict[str, LoraAdapter], where: str) -> tuple[dict | None, dict]:
    """A mode's ``loras = [names]`` (fused at load) with each name's table, for the engine."""

    def one(table: Any, at: str) -> Any:
        if not isinstance(table, dict):
            return table
        return {k: resolve_fused(v, library, f"{at}.{k}") if k in ("loras", "extend_loras") else v for k, v in table.items()}

    return one(default, f"{where}.default"), {m: one(t, f"{where}.modes.{m}") for m, t in modes.items()}


def _check_context_parallel(model: ModelConfig) -> None:
    """``context_parallel`` splits one task over the model's device group: its degree is the group's size."""
    from .engines.levers import ContextParallelOptions

    for mode, spec in model.modes.items():
        cp = spec.options.get("context_parallel")
        if cp is not None and (degree := ContextParallelOptions(**cp).degree) != model.devices_per_task:
            raise ValueError(
                f"models.{model.name} ({mode.value}, engine {spec.engine}): context_parallel = {cp} splits a task over "
                f"{degree} ranks, but devices_per_task = {model.devices_per_task} (set devices_per_task = {degree})"
            )


class Settings(BaseSettings):
    """Every setting of the server, from flags, ``OPENDANCE_*`` variables or defaults."""

    model_config = SettingsConfigDict(env_prefix="OPENDANCE_", extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, description="port to listen on")
    data_dir: Path = Field(Path("./opendance-data"), description="SQLite database, videos and inputs live here")
    config: Path | None = Field(None, description="models TOML file; without it the seed names run on the preview engine")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/opendance.db")
    public_url: str | None = Field(None, description="base URL for video_url links; default the request's own base URL")
    api_keys: CommaList = Field(default_factory=list, description="comma-separated bearer keys; none = open server")
    allow_hosts: CommaList = Field(
        default_factory=list,
        description="comma-separated hosts, IPs or CIDR networks that media URLs may reach although private",
    )
    runner: Literal["local", "temporal"] = Field("local", description="who runs tasks")
    storage: Literal["local", "s3"] = Field("local", description="where videos are stored")
    devices: CommaList = Field(
        ["cpu"], description="devices of the model engines (cpu, cuda:0, cuda:1 ...): one worker process (rank) each"
    )
    cpu_slots: int | None = Field(
        None, ge=1, description="preview and scenario tasks at once, one process each; default the number of cores"
    )
    device_memory: str | None = Field(
        None,
        pattern=r"^\s*[0-9.]+\s*([KMGT]i?B?|B)?\s*$",
        description="memory of each device for the memory plan (e.g. 80GiB); default nvidia-smi's for cuda, host RAM for cpu",
    )
    relay_concurrency: int = Field(256, ge=1, description="relay tasks at once (asyncio tasks, no worker process)")
    relay_breaker_failures: int = Field(
        3, ge=1, description="failed upstream requests in a row after which a relay channel is skipped for a cool-down"
    )
    relay_breaker_cooldown: float = Field(30.0, gt=0, description="seconds a failing relay channel is skipped")

    header_timeout: float = Field(
        10.0,
        ge=0,
        description="seconds a client has to send a request's line and headers, from connecting or from the end "
        "of the previous response; then 408 and the connection is closed; 0 = no deadline",
    )
    body_timeout: float = Field(
        120.0,
        ge=0,
        description="seconds a client has to send a request's whole body, from the end of its headers; then 408 "
        "and the connection is closed (raise it for big uploads over slow links); 0 = no deadline",
    )
    keep_alive_timeout: float = Field(5.0, gt=0, description="seconds an idle kept-alive connection stays open")
    max_connections: int = Field(
        1000,
        ge=0,
        description="open HTTP connections at once; one more is answered 503 and closed; 0 = no cap "
        "(keep it below the open-files limit, ulimit -n)",
    )
    max_body_bytes: int = Field(64 * MiB, description="largest request body; larger is a 413")
    image_max_bytes: int = Field(30 * MiB, description="byte cap per image")
    video_max_bytes: int = Field(200 * MiB, description="byte cap per video")
    audio_max_bytes: int = Field(15 * MiB, description="byte cap per audio")
    media_inflight_bytes: int = Field(
        2 * 1024 * MiB,
        ge=0,
        description="media bytes all creates under way may hold at once (spooled to disk while "
        "fetched); a create that does not fit waits up to media_wait s, then is a 503; 0 = no limit",
    )
    decode_budget_bytes: int = Field(
        512 * MiB,
        ge=0,
        description="memory all decodes of media at create time may take at once, counted from the "
        "headers before decoding (4 bytes a pixel for images); more waits up to media_wait s, then is a 503; 0 = no limit",
    )
    media_threads: int = Field(0, ge=0, description="threads that decode and probe media at create time; 0 = min(4, cores)")
    media_wait: float = Field(
        10.0, ge=0, description="seconds a create may wait for room in the media budgets before it is refused (503)"
    )
    max_input_bytes_per_key: int = Field(
        10 * 1024 * MiB,
        ge=0,
        description="bytes of inputs (images, videos, audios) one API key's tasks may keep "
        "stored; a create past it is a 429; 0 = no limit",
    )
    fetch_connect_timeout: float = Field(10.0, description="seconds to connect to a media host")
    fetch_read_timeout: float = Field(30.0, description="seconds a media host may stay silent")
    fetch_total_timeout: float = Field(120.0, description="seconds one media download may take in all")
    fetch_max_redirects: int = Field(5, description="redirects followed per media URL")

    rate_limit_per_minute: int = Field(
        1200, ge=0, description="requests a minute per API key (per client address on an open server); 0 = off"
    )
    rate_limit_burst: int = Field(200, ge=1, description="requests a key may make at once before the per-minute rate applies")
    max_queued_per_key: int = Field(
        100, ge=0, description="unfinished (queued or running) tasks per API key; more is a 429; 0 = off"
    )
    max_queued_total: int = Field(1000, ge=0, description="unfinished tasks on the whole server; more is a 503; 0 = off")

    max_attempts: int = Field(3, description="runs of a task (crash, restart) before it fails")
    task_timeout: float = Field(3600.0, description="seconds a task may run before it is EXPIRED")
    retention_hours: float = Field(
        0.0, description="finished tasks and their files are deleted this long after they finish; 0 keeps them until deleted"
    )
    callback_attempts: int = Field(5, description="deliveries tried per callback_url POST")
    callback_timeout: float = Field(10.0, description="seconds per callback_url POST")
    log_level: str = Field("info", description="log level")

    # -- scale-out: checkpoints, S3 storage, the Temporal runner and its workers (docs/scale-out.md)
    checkpoint_every: int = Field(
        5, ge=0, description="engine steps between resume checkpoints in storage (denoising steps; frames for preview); 0 = off"
    )
    s3_bucket: str | None = Field(None, description="S3 bucket for videos, inputs and checkpoints (storage=s3)")
    s3_prefix: str = Field("", description="key prefix inside the bucket, e.g. 'opendance/'")
    s3_endpoint_url: str | None = Field(None, description="S3 API endpoint (SeaweedFS, MinIO, R2 ...); default AWS")
    s3_public_endpoint_url: str | None = Field(
        None, description="endpoint written into presigned links, when clients reach S3 at another address than servers do"
    )
    s3_region: str | None = Field(None, description="S3 region, e.g. us-east-1")
    s3_access_key_id: str | None = Field(None, description="S3 access key; default boto3's chain (env, profile, instance role)")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key, with s3_access_key_id")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="bucket in the path (SeaweedFS, MinIO) or in the host name (AWS)"
    )
    s3_create_bucket: bool = Field(False, description="create the bucket at start when it is missing (development)")
    s3_presign_seconds: int = Field(3600, ge=60, description="lifetime of presigned content links")
    content_serving: Literal["redirect", "proxy"] = Field(
        "redirect", description="S3 content: a 302 to a presigned link, or streamed through the API with Range"
    )
    temporal_address: str = Field("127.0.0.1:7233", description="Temporal frontend host:port (runner=temporal, workers)")
    temporal_namespace: str = Field("default", description="Temporal namespace")
    temporal_control_queue: str = Field(
        "opendance-control", description="task queue of the workflows and bookkeeping activities; API servers poll it"
    )
    temporal_queue_prefix: str = Field(
        "opendance-model-", description="a model's generate activities go to the task queue <prefix><model name>"
    )
    temporal_heartbeat_timeout: float = Field(
        15.0, gt=0, description="seconds without a heartbeat after which a worker counts as dead and the task is retried"
    )
    temporal_retry_interval: float = Field(1.0, gt=0, description="seconds before the first retry of a task; doubles per retry")
    temporal_retry_max_interval: float = Field(30.0, gt=0, description="longest wait between two retries")
    temporal_execution_deadline: float = Field(
        86400.0, gt=0, description="seconds from submit (queueing and retries included) after which a task is EXPIRED"
    )
    temporal_reconcile_interval: float = Field(
        60.0, gt=0, description="seconds between checks that every unfinished task in the store has a workflow"
    )
    worker_models: CommaList = Field(
        default_factory=list, description="models an 'opendance worker' serves (one task queue each)"
    )
    worker_slots: int | None = Field(
        None,
        ge=1,
        description="tasks an 'opendance worker' runs at once per model queue; default what the model's executor has "
        "(one per device group, cpu_slots for preview, relay_concurrency for relays)",
    )

    @field_validator("api_keys", "allow_hosts", "devices", "worker_models", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [item.strip() for item in v.split(",") if item.strip()]
        return v

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'opendance.db').resolve()}"

    def models(self) -> dict[str, ModelConfig]:
        return load_models(self.config)
