"""The one settings object. Only this module reads the environment.

CLI flags, ``OPENDANCE_*`` variables and the models TOML file fill the same ``Settings``;
``create_app(settings)`` builds everything from it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .domain import OUTPUT_SIZES, Mode

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
    owned_by: str = "opendance"

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
    models: dict[str, ModelConfig] = {}
    for name, raw in (data.get("models") or {}).items():
        raw = dict(raw)
        default = raw.pop("default", None)
        modes_raw = raw.pop("modes", {}) or {}
        modes: dict[Mode, EngineSpec] = {}
        if default is not None:
            modes = {m: EngineSpec(**default) for m in Mode}
        for mode_name, spec in modes_raw.items():
            try:
                mode = Mode(mode_name)
            except ValueError:
                raise ValueError(f"models.{name}.modes: unknown mode {mode_name!r}; one of {[m.value for m in Mode]}")
            modes[mode] = EngineSpec(**{**(default or {}), **spec})
        if not modes:
            raise ValueError(f"models.{name}: no modes configured (add a [default] or [modes.*] table)")
        models[name] = ModelConfig(name=name, modes=modes, **raw)
    if not models:
        raise ValueError(f"{path}: no [models.*] tables")
    return models


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
    devices: CommaList = Field(["cpu"], description="one worker process per device (cpu, cuda:0, cuda:1 ...)")

    max_body_bytes: int = Field(64 * MiB, description="largest request body; larger is a 413")
    image_max_bytes: int = Field(30 * MiB, description="byte cap per image")
    video_max_bytes: int = Field(200 * MiB, description="byte cap per video")
    audio_max_bytes: int = Field(15 * MiB, description="byte cap per audio")
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

    @field_validator("api_keys", "allow_hosts", "devices", mode="before")
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
