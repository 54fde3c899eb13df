"""The options each built-in engine takes from its mode's table in the models file.

Pydantic only (no torch, no diffusers), so that ``opendance serve`` checks every model's options
when it reads the models file, on an API server that has no torch installed, and refuses to start
with the model, the mode and the key at fault. What only the weights can tell (a window the VAE
cannot encode, ``call_kwargs`` the pipeline does not take, a folder that is not there) is checked
when a worker loads the engine.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .lora import FusedLora
from .levers import LeverOptions


# The constraints live in the types, so an engine that changes a default keeps them.
Steps = Annotated[int, Field(ge=1, le=500)]
Guidance = Annotated[float, Field(ge=0)]
Fps = Annotated[int, Field(ge=1, le=120)]
FrameCount = Annotated[int, Field(ge=1)]
Area = Annotated[int, Field(ge=64)]
Strength = Annotated[float, Field(ge=0, le=1)]
DType = Literal["float32", "float16", "bfloat16"]
DownscaleFactor = Annotated[float, Field(gt=0, lt=1)]
AdainFactor = Annotated[float, Field(ge=-10, le=10)]
ToneMap = Annotated[float, Field(ge=0, le=1)]


# ``__call__`` arguments the diffusers engines set themselves, per job, chunk or stage.
ENGINE_ARGUMENTS = frozenset(
    {
        "prompt",
        "negative_prompt",
        "height",
        "width",
        "num_frames",
        "num_inference_steps",
        "guidance_scale",
        "generator",
        "output_type",
        "callback_on_step_end",
        "callback_on_step_end_tensor_inputs",
        "latents",
        "conditions",
        "image",
        "last_image",
        "video",
        "mask",
        "timesteps",
        "sigmas",
        "denoise_strength",
    }
)


class CacheOptions(BaseModel):
    """``cache = {type = "FirstBlockCache", threshold = 0.2}``: a diffusers cache hook on the
    transformer(s). Every other key goes to the hook's config class."""

    model_config = ConfigDict(extra="allow")
    type: Literal["FirstBlockCache", "MagCache", "TaylorSeer"]

    def build(self, steps: int, defaults: dict[str, Any] | None = None):
        from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

        params = {**(defaults or {}), **(self.model_extra or {})}
        if self.type == "FirstBlockCache":
            return FirstBlockCacheConfig(**params)
        if self.type == "MagCache":
            return MagCacheConfig(**{"num_inference_steps": steps, **params})
        if isinstance(params.get("taylor_factors_dtype"), str):
            import torch

            params["taylor_factors_dtype"] = getattr(torch, params["taylor_factors_dtype"])
        return TaylorSeerCacheConfig(**params)


class DiffusersOptions(LeverOptions):
    """Options every diffusers engine takes from its mode's TOML table (unknown keys are refused;
    the speed and memory levers are ``levers.LeverOptions``)."""

    model_config = ConfigDict(extra="forbid")

    engine: str
    checkpoint: Path = Field(description="local diffusers folder, loaded with from_pretrained(path)")
    pipeline: str | None = Field(None, description="diffusers pipeline class; default chosen per mode")
    steps: Steps = Field(30, description="denoising steps per chunk")
    guidance: Guidance = Field(5.0, description="guidance_scale")
    native_fps: Fps = Field(24, description="frame rate the model was trained at")
    frames: FrameCount = Field(121, description="native frame window: frames per generated chunk")
    overlap: FrameCount = Field(9, description="tail frames of a chunk that condition the next one")
    max_area: Area = Field(480 * 832, description="pixels of the native grid (width x height)")
    dtype: DType | dict[str, DType] = Field(
        "bfloat16",
        description="torch dtype of the weights, or a table per component: {default = ..., vae = ..., transformer = ...}",
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _one_dtype_or_a_table(cls, value: Any) -> Any:
        """One clear message instead of pydantic's two, one per member of the union."""
        choices = typing.get_args(DType)
        named = "'float32', 'float16' or 'bfloat16'"
        if isinstance(value, dict):
            for component, one in value.items():
                if one not in choices:
                    raise ValueError(f"dtype.{component} is {one!r}; it must be {named}")
            return value
        if value not in choices:
            raise ValueError(f"dtype is {value!r}; it must be {named}, or a table per component ({{default = ..., vae = ...}})")
        return value

    scheduler: dict[str, Any] = Field(
        default_factory=dict,
        description="scheduler config overrides for this mode's calls only (flow_shift, shift, use_dynamic_shifting, ...)",
    )
    device: str | None = Field(None, description="overrides the worker's device")
    cache: CacheOptions | None = None
    cpu_offload: bool = Field(False, description="enable_model_cpu_offload (small GPUs)")
    vae_tiling: bool = Field(False, description="vae.enable_tiling (small GPUs, large frames)")
    negative_prompt: str = Field("", description="used when a request has none")
    call_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra pipeline __call__ arguments")

    @field_validator("call_kwargs")
    @classmethod
    def _not_the_engines_own(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The arguments the engine sets for every call (the job's, the chunk's or a stage's) are
        not the models file's: they would clash with the engine's, or be overridden by them."""
        if managed := sorted(set(value) & ENGINE_ARGUMENTS):
            raise ValueError(
                f"call_kwargs {managed} are set by the engine for every call; use the job's fields or the mode's "
                "options (steps, guidance, timesteps, sigmas, denoise_strength, ...) instead"
            )
        return value

    loras: list[FusedLora] = Field(default_factory=list, description="LoRAs fused into the weights at load (engines/lora.py)")
    lora_hotswap_rank: int | None = Field(
        None, ge=1, le=1024, description="per-request LoRAs hot-swapped into fixed slots of this rank (set with compile)"
    )

    # Per-component dtypes of the family, under what the ``dtype`` option names.
    dtype_defaults: ClassVar[dict[str, str]] = {}

    # The field holding a distilled model's own schedule, if the engine takes one: its length
    # is the step count (``steps``, when also given, must agree).
    schedule_field: ClassVar[str | None] = None

    @model_validator(mode="after")
    def _window(self) -> DiffusersOptions:
        if self.overlap >= self.frames:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than frames ({self.frames})")
        return self

    @model_validator(mode="after")
    def _schedule(self) -> DiffusersOptions:
        name = self.schedule_field
        schedule = getattr(self, name) if name else None
        if schedule is not None:
            if "steps" in self.model_fields_set and self.steps != len(schedule):
                raise ValueError(f"steps = {self.steps} but {name} has {len(schedule)} values")
            self.steps = len(schedule)
        return self


class WanOptions(DiffusersOptions):
    steps: Steps = 40
    guidance: Guidance = 5.0
    native_fps: Fps = 16
    frames: FrameCount = 81
    overlap: FrameCount = 9
    extend_checkpoint: Path | None = Field(None, description="Wan VACE folder for chunks past the window")
    extend_scheduler: dict[str, Any] | None = Field(
        None, description="scheduler config of the extend_checkpoint's calls (default: the scheduler option)"
    )
    guidance_2: float | None = Field(None, description="guidance_scale_2 (Wan 2.2 low-noise expert)")
    extend_loras: list[FusedLora] | None = Field(
        None, description="LoRAs fused into the extend_checkpoint VACE at load; default the mode's loras"
    )
    # diffusers' Wan examples and the model cards decode and encode images in float32.
    dtype_defaults: ClassVar[dict[str, str]] = {"vae": "float32", "image_encoder": "float32"}


class LTXOptions(DiffusersOptions):
    steps: Steps = 40
    guidance: Guidance = 3.0
    native_fps: Fps = 24
    frames: FrameCount = 121
    overlap: FrameCount = 9
    max_area: Area = 704 * 480
    timesteps: list[float] | None = Field(None, description="a distilled model's schedule (0-1000)")
    decode_timestep: float = Field(0.05, description="VAE decode timestep (timestep-aware VAEs)")
    image_cond_noise_scale: float = Field(0.025, ge=0, description="noise added to hard conditions")
    reference_strength: Strength = Field(0.5, description="strength of omni-reference conditions")
    schedule_field: ClassVar[str | None] = "timesteps"

    # The two-stage recipe (ltx_two_stage): on when ``upsampler`` is set, inert otherwise.
    upsampler: Path | None = Field(
        None, description="latent upsampler folder (LTXLatentUpsamplePipeline, e.g. ltxv-spatial-upscaler-0.9.7): two stages"
    )
    downscale_factor: DownscaleFactor = Field(2 / 3, description="stage 1 runs at this fraction of the grid")
    adain_factor: AdainFactor = Field(1.0, description="the upsampler's AdaIN blend with the stage-1 latents")
    tone_map_compression_ratio: ToneMap = Field(0.0, description="the upsampler's tone mapping (0.6 for LTX-Video 0.9.8)")
    refine_timesteps: list[float] | None = Field(
        None, description="the refining pass's schedule (0-1000); its length is its step count"
    )
    refine_steps: Steps = Field(10, description="the refining pass's steps when refine_timesteps is not given")
    denoise_strength: float = Field(
        0.4, gt=0, lt=1, description="the refining pass runs the last int(steps x denoise_strength) of its schedule"
    )

    @model_validator(mode="after")
    def _refine(self) -> LTXOptions:
        if self.upsampler is not None:
            if self.refine_timesteps is not None:
                if "refine_steps" in self.model_fields_set and self.refine_steps != len(self.refine_timesteps):
                    raise ValueError(
                        f"refine_steps = {self.refine_steps} but refine_timesteps has {len(self.refine_timesteps)} values"
                    )
                self.refine_steps = len(self.refine_timesteps)
            if self.refined_steps < 1:
                raise ValueError(
                    f"denoise_strength = {self.denoise_strength} leaves no refining step of {self.refine_steps} "
                    "(int(steps x denoise_strength) must be at least 1)"
                )
        return self

    @property
    def refined_steps(self) -> int:
        """The steps the refining pass runs (``LTXConditionPipeline.get_timesteps``)."""
        return min(int(self.refine_steps * self.denoise_strength), self.refine_steps)


class LTX2Options(DiffusersOptions):
    steps: Steps = 40
    guidance: Guidance = 4.0
    native_fps: Fps = 24
    frames: FrameCount = 121
    overlap: FrameCount = 9
    max_area: Area = 768 * 512
    sigmas: list[float] | None = Field(None, description="a distilled model's sigma schedule")
    decode_timestep: float = Field(0.05, description="VAE decode timestep (timestep-aware VAEs)")
    reference_strength: Strength = Field(0.5, description="strength of omni-reference conditions")
    schedule_field: ClassVar[str | None] = "sigmas"

    # The two-stage distilled recipe (ltx_two_stage): on when ``upsampler`` is set, inert otherwise.
    upsampler: Path | None = Field(
        None, description="latent upsampler folder (LTX2LatentUpsamplePipeline, or its latent_upsampler model): two stages"
    )
    downscale_factor: DownscaleFactor = Field(0.5, description="stage 1 runs at this fraction of the grid")
    adain_factor: AdainFactor = Field(0.0, description="the upsampler's AdaIN blend with the stage-1 latents")
    tone_map_compression_ratio: ToneMap = Field(0.0, description="the upsampler's tone mapping")
    refine_sigmas: list[float] = Field(
        [0.909375, 0.725, 0.421875], min_length=1, description="the refining pass's sigmas (STAGE_2_DISTILLED_SIGMA_VALUES)"
    )
    refine_noise_scale: float | None = Field(
        None, ge=0, le=1, description="noise the refining pass starts from; default refine_sigmas[0]"
    )
    refine_guidance: Guidance = Field(1.0, description="guidance_scale of the refining pass")

    @model_validator(mode="after")
    def _refine(self) -> LTX2Options:
        if self.upsampler is not None and self.sigmas is None:
            raise ValueError(
                "upsampler: the two-stage recipe is the distilled one and needs sigmas (the distilled schedule); "
                "the full model's refining pass needs a distilled LoRA, which the engine does not load"
            )
        return self

    @property
    def refined_steps(self) -> int:
        return len(self.refine_sigmas)


class PreviewOptions(BaseModel):
    """The preview engine's options (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    engine: str
    checkpoint_frames: int = Field(0, ge=0, description="keep finished frames as checkpoint chunks of this many; 0 = off")
    font: Path | None = Field(
        None, description="a TTF/OTF/TTC font for the prompt caption (the built-in one has Latin glyphs only)"
    )


Protocol = Literal["legacy", "openai", "ark"]
RELAY_CHANNEL_KEYS = ("protocol", "base_url", "upstream_model", "api_key_env")


class ChannelOptions(BaseModel):
    """One upstream a relay model can send its tasks to."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="the channel's name in /readyz and /metrics; default the base_url's host:port. "
        "Channels of the same name share one health record (circuit breaker), across models too",
    )
    protocol: Protocol = Field(
        description="legacy: this API's /v1/video/generations (Seedance gateways, another opendance); "
        "openai: OpenAI's /v1/videos (SGLang Diffusion, vLLM-Omni, OpenAI); "
        "ark: BytePlus ModelArk / Volcengine Ark's contents/generations/tasks"
    )
    base_url: str = Field(
        pattern=r"^https?://[^/\s]+",
        description="the upstream server, e.g. https://api.example.com (ark: with its /api/v3 path)",
    )
    upstream_model: str = Field(min_length=1, description="the model name to ask the upstream for")
    api_key_env: str | None = Field(None, description="environment variable holding the upstream's API key")
    priority: int = Field(0, ge=0, le=1000, description="lower first: a channel is used while every better one is down")
    weight: float = Field(1.0, gt=0, le=1_000_000, description="share of the creates among healthy channels of one priority")

    @property
    def id(self) -> str:
        from urllib.parse import urlsplit

        return self.name or urlsplit(self.base_url).netloc


class RelayOptions(BaseModel):
    """The relay engine's options: the upstream channels and how to follow a task there.

    A model names one upstream with ``protocol``, ``base_url``, ``upstream_model`` and
    ``api_key_env`` at the top, or several as ``[[...channels]]`` tables (not both)."""

    model_config = ConfigDict(extra="forbid")

    engine: str
    channels: list[ChannelOptions] = Field(min_length=1, max_length=32, description="the upstreams, tried by priority")
    poll_interval: float = Field(2.0, gt=0, le=60, description="seconds between status polls")
    request_timeout: float = Field(30.0, gt=0, description="seconds per upstream HTTP request")
    deadline: float = Field(3600.0, gt=0, description="seconds the upstream may take for one task")
    poll_outage: float = Field(
        120.0, gt=0, description="seconds a task's channel may fail every poll (network errors, 429, 5xx) before the task fails"
    )
    max_video_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="largest upstream video accepted")

    @model_validator(mode="before")
    @classmethod
    def _one_channel(cls, data: Any) -> Any:
        """The single-upstream form is one channel."""
        if isinstance(data, dict) and "channels" not in data:
            data = dict(data)
            data["channels"] = [{k: data.pop(k) for k in RELAY_CHANNEL_KEYS if k in data}]
        elif isinstance(data, dict) and (both := [k for k in RELAY_CHANNEL_KEYS if k in data]):
            raise ValueError(f"give either channels or {', '.join(both)} (one upstream), not both")
        return data

    @model_validator(mode="after")
    def _names(self) -> RelayOptions:
        ids = [c.id for c in self.channels]
        if len(set(ids)) != len(ids):
            raise ValueError(f"channel names must differ within a model (give each a name); got {', '.join(ids)}")
        return self


# The engines whose options are checked with the models file (others, e.g. ``module:Class``
# engines, check their own when they load).
OPTIONS: dict[str, type[BaseModel]] = {
    "preview": PreviewOptions,
    "wan": WanOptions,
    "ltx": LTXOptions,
    "ltx2": LTX2Options,
    "relay": RelayOptions,
}


# What OpenAI's /v1/videos can be asked for: a prompt and at most one first frame.
OPENAI_RELAY_MODES = ("text-to-video", "image-to-video")


def check_options(engine: str, spec: dict[str, Any], mode: str | None = None) -> None:
    """Raise ``ValueError`` naming every key at fault when ``spec`` is not valid for ``engine``
    (making ``mode``, when given)."""
    model = OPTIONS.get(engine)
    if model is None:
        return
    try:
        opts = model(**spec)
    except ValidationError as exc:
        one_channel = engine == "relay" and "channels" not in spec  # name the keys as the file has them
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            if one_channel and loc[:2] == ["channels", "0"]:
                loc = loc[2:]
            where = ".".join(loc)
            problems.append(f"{where}: {err['msg']}" if where else err["msg"])
        raise ValueError("; ".join(problems)) from None
    if isinstance(opts, RelayOptions) and mode not in (None, *OPENAI_RELAY_MODES):
        for channel in opts.channels:
            if channel.protocol == "openai":
                raise ValueError(
                    f'protocol = "openai" (channel {channel.id}) cannot relay {mode}: '
                    "OpenAI's /v1/videos takes a prompt and one first frame"
                )
