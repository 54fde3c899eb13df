"""Every rule of the create body (spec/api.md), each refused with a 400 naming its field.

``parse_create`` checks shape and values only; media content (fetching, decoding, durations)
is ``media.intake``'s job. It never corrects bad input silently.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from ..config import ModelConfig
from ..engines.lora import MAX_PER_REQUEST, MAX_SCALE, MIN_SCALE, job_lora
from ..domain import ASPECT_RATIOS, DEFAULT_DURATION, MAX_DURATION, MIN_DURATION, Mode
from ..errors import InvalidRequest

MAX_PROMPT = 5000
MAX_SEED = 4294967295
# Levels of arrays/objects a field may hold (extra_body is kept on the task; nothing the API
# defines is deeper than 2). Deeper values cannot always be stored and rendered again.
MAX_DEPTH = 32
LIMITS = {"images": 9, "videos": 3, "audios": 3}
BOOL_KEYS = ("generate_audio", "watermark", "camera_fixed", "return_last_frame")
SERVICE_TIERS = ("default", "flex")
MAX_EXPIRES_AFTER = 259200  # upstream's longest execution_expires_after (72 h)
FIELDS = ("model", "prompt", "image", "last_image", "images", "videos", "audios", "duration", "aspect_ratio", "extra_body")
MAX_IGNORED_SHOWN, MAX_NAME_SHOWN = 20, 64  # ignored_fields lists at most this many names, each cut to this length


def ignored_fields(body: dict[str, Any]) -> list[str]:
    """The top-level fields the spec does not define (``durration``): ignored, but reported."""
    unknown = [name for name in body if name not in FIELDS]
    return [name if len(name) <= MAX_NAME_SHOWN else name[:MAX_NAME_SHOWN] + "..." for name in unknown[:MAX_IGNORED_SHOWN]]


@dataclass
class CreateRequest:
    model: str
    mode: Mode
    prompt: str
    duration: int
    aspect_ratio: str | None  # None: choose from the first input image (or 16:9 for text)
    image: str | None = None
    last_image: str | None = None
    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    audios: list[str] = field(default_factory=list)
    seed: int | None = None  # None: random
    negative_prompt: str = ""
    callback_url: str | None = None
    options: dict[str, bool] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    ignored_fields: list[str] = field(default_factory=list)  # unknown top-level fields (ignored, as the spec says)
    service_tier: str = "default"
    expires_after: int | None = None  # seconds from creation after which an unfinished task is EXPIRED
    loras: list[dict[str, Any]] = field(default_factory=list)  # extra_body.loras resolved (engines.lora.job_lora)

    @property
    def has_media(self) -> bool:
        return bool(self.image or self.last_image or self.images or self.videos or self.audios)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _bad(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _shown_key(key: str) -> str:
    """A key as it may appear in ``param``: surrogates escaped, long keys cut."""
    text = key.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 40 else text[:40] + "..."


def _has_lone_surrogate(text: str) -> bool:
    if text.isascii():  # O(1) in CPython: data: URIs and most prompts end here
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_json_values(body: dict[str, Any]) -> None:
    """Refuse what Python's JSON parser takes but no store or response can hold again: a number
    that is not finite (``1e400`` parses as infinity), an unpaired surrogate (``"\\udfff"``) in
    any string or key, and a field nested more than ``MAX_DEPTH`` levels. Iterative (a deep value
    costs no recursion) and in document order; the 400 names the field (``extra_body.a[2]``)."""
    # (value, its param, the top-level field it is in, its depth below that field)
    stack: list[tuple[Any, str, str, int]] = []
    for key, value in reversed(body.items()):
        shown = _shown_key(key)
        if _has_lone_surrogate(key):
            raise _bad(shown, f"the field name '{shown}' holds an unpaired UTF-16 surrogate", "invalid_string")
        stack.append((value, shown, shown, 0))
    while stack:
        value, param, top, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(param, f"{param} is a number too large to represent (it reads as {value}); numbers must be finite")
        if isinstance(value, str):
            if _has_lone_surrogate(value):
                message = f"{param} holds an unpaired UTF-16 surrogate (an escape like \\udfff with no pair), which is not text"
                raise _bad(param, message, "invalid_string")
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise _bad(top, f"{top} is nested more than {MAX_DEPTH} levels deep", "too_deep")
            if isinstance(value, list):
                stack.extend((item, f"{param}[{i}]", top, depth + 1) for i, item in reversed(list(enumerate(value))))
                continue
            for key in value:
                if _has_lone_surrogate(key):
                    message = f"{param} has a key ('{_shown_key(key)}') holding an unpaired UTF-16 surrogate"
                    raise _bad(param, message, "invalid_string")
            stack.extend((item, f"{param}.{_shown_key(key)}", top, depth + 1) for key, item in reversed(value.items()))


def _string(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(key, f"{key} must be a string, not {_type_name(value)}", "invalid_type")
    return value


def _split_url(value: str, param: str) -> urllib.parse.SplitResult:
    """``urlsplit`` that turns its ValueErrors (``http://[::1/x``, a port past 65535) into a 400."""
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - parsed lazily: raises for "Port out of range 0-65535" and non-numbers
    except ValueError as exc:
        raise _bad(param, f"{param} is not a valid URL: {exc}", "invalid_url") from None
    return parts


def _media_url(value: str, param: str) -> str:
    if value[:5].lower() == "data:":  # the scheme is case-insensitive (RFC 3986): DATA: too
        return value
    scheme = _split_url(value.strip(), param).scheme.lower()
    if scheme in ("http", "https"):
        return value.strip()
    if not scheme:
        raise _bad(param, f"{param} must be an http(s):// URL or a data: URI", "invalid_url")
    raise _bad(
        param, f"{param}: the URL scheme {scheme!r} is not allowed; use http(s):// or a data: URI", "unsupported_url_scheme"
    )


def _media_list(body: dict, key: str) -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]  # a bare string counts as a one-item array
    if not isinstance(value, list):
        raise _bad(key, f"{key} must be an array of URLs, not {_type_name(value)}", "invalid_type")
    limit = LIMITS[key]
    if not 1 <= len(value) <= limit:
        raise _bad(key, f"{key} must hold 1 to {limit} items; got {len(value)}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _bad(f"{key}[{i}]", f"{key}[{i}] must be a string URL, not {_type_name(item)}", "invalid_type")
        out.append(_media_url(item, f"{key}[{i}]"))
    return out


# ASCII digits only: int() also reads Arabic-Indic or fullwidth digits, which no client means.
_INT_STRING = re.compile(r"^\s*[+-]?[0-9]+(\.0*)?\s*$", re.ASCII)


def parse_duration(value: Any) -> int:
    """5 to 15 whole seconds: an integer, an integral float (5.0), or a string holding one."""
    if value is None:
        return DEFAULT_DURATION
    if isinstance(value, bool):
        raise _bad("duration", "duration must be an integer number of seconds (5-15), not a boolean", "invalid_type")
    if isinstance(value, str):
        if not _INT_STRING.match(value):
            raise _bad("duration", f"duration must be a whole number of seconds (5-15); got {value!r}", "invalid_type")
        value = float(value)
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise _bad("duration", f"duration must be a whole number of seconds (5-15); got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise _bad("duration", f"duration must be an integer, not {_type_name(value)}", "invalid_type")
    if not MIN_DURATION <= value <= MAX_DURATION:
        raise _bad("duration", f"duration must be between {MIN_DURATION} and {MAX_DURATION} seconds; got {value}")
    return value


def parse_aspect_ratio(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad("aspect_ratio", f"aspect_ratio must be a string, not {_type_name(value)}", "invalid_type")
    if value not in ASPECT_RATIOS:
        raise _bad("aspect_ratio", f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}; got {value!r}")
    return value


def _extra_body(body: dict) -> tuple[dict[str, Any], int | None, str, str | None, dict[str, bool]]:
    extra = body.get("extra_body")
    if extra is None:
        return {}, None, "", None, {}
    if not isinstance(extra, dict):
        raise _bad("extra_body", f"extra_body must be an object, not {_type_name(extra)}", "invalid_type")
    seed = extra.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            if isinstance(seed, float) and seed.is_integer():
                seed = int(seed)
            else:
                raise _bad("extra_body.seed", f"extra_body.seed must be an integer, not {_type_name(seed)}", "invalid_type")
        if not -1 <= seed <= MAX_SEED:
            raise _bad("extra_body.seed", f"extra_body.seed must be between -1 and {MAX_SEED}; got {seed}")
        if seed == -1:
            seed = None
    negative = extra.get("negative_prompt")
    if negative is None:
        negative = ""
    elif not isinstance(negative, str):
        raise _bad(
            "extra_body.negative_prompt",
            f"extra_body.negative_prompt must be a string, not {_type_name(negative)}",
            "invalid_type",
        )
    elif len(negative) > MAX_PROMPT:
        raise _bad(
            "extra_body.negative_prompt", f"extra_body.negative_prompt is {len(negative)} characters; at most {MAX_PROMPT}"
        )
    options: dict[str, bool] = {}
    for key in BOOL_KEYS:
        value = extra.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise _bad(f"extra_body.{key}", f"extra_body.{key} must be a boolean, not {_type_name(value)}", "invalid_type")
        options[key] = value
    callback = extra.get("callback_url")
    if callback is not None:
        if not isinstance(callback, str):
            raise _bad(
                "extra_body.callback_url", f"extra_body.callback_url must be a string, not {_type_name(callback)}", "invalid_type"
            )
        parts = _split_url(callback, "extra_body.callback_url")
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise _bad("extra_body.callback_url", "extra_body.callback_url must be an http(s):// URL", "invalid_url")
    return extra, seed, negative, callback, options


def _tier(extra: dict[str, Any]) -> tuple[str, int | None]:
    """``extra_body.service_tier`` and ``extra_body.execution_expires_after`` (upstream's)."""
    tier = extra.get("service_tier")
    if tier is None:
        tier = "default"
    elif tier not in SERVICE_TIERS:
        raise _bad("extra_body.service_tier", f"extra_body.service_tier must be one of {', '.join(SERVICE_TIERS)}; got {tier!r}")
    after = extra.get("execution_expires_after")
    if after is None:
        return tier, None
    if isinstance(after, float) and after.is_integer():
        after = int(after)
    param = "extra_body.execution_expires_after"
    if isinstance(after, bool) or not isinstance(after, int):
        raise _bad(param, f"{param} must be an integer number of seconds, not {_type_name(after)}", "invalid_type")
    if not 1 <= after <= MAX_EXPIRES_AFTER:
        raise _bad(param, f"{param} must be between 1 and {MAX_EXPIRES_AFTER} seconds; got {after}")
    return tier, after


def parse_loras(extra: dict[str, Any], config: ModelConfig) -> list[dict[str, Any]]:
    """``extra_body.loras = [{"name": ..., "scale": ...}]``: up to ``MAX_PER_REQUEST`` of the
    model's ``allowed_loras``, each once, scale in [-4, 4] (default the adapter's own). Each bad
    item is a 400 naming ``extra_body.loras[i]``."""
    items = extra.get("loras")
    if items is None:
        return []
    if not isinstance(items, list):
        raise _bad("extra_body.loras", f"extra_body.loras must be an array of objects, not {_type_name(items)}", "invalid_type")
    allowed = config.allowed_loras
    out: list[dict[str, Any]] = []
    if len(items) > MAX_PER_REQUEST:
        param = f"extra_body.loras[{MAX_PER_REQUEST}]"
        raise _bad(param, f"{param}: extra_body.loras holds {len(items)} items; at most {MAX_PER_REQUEST} LoRAs per request")
    for i, item in enumerate(items):
        param = f"extra_body.loras[{i}]"
        if not isinstance(item, dict):
            raise _bad(param, f'{param} must be an object {{"name": ..., "scale": ...}}, not {_type_name(item)}', "invalid_type")
        unknown = sorted(set(item) - {"name", "scale"})
        if unknown:
            raise _bad(param, f"{param} has unknown keys ({', '.join(_shown_key(k) for k in unknown)}); it takes name and scale")
        name = item.get("name")
        if not isinstance(name, str):
            raise _bad(param, f"{param}.name must be a string, not {_type_name(name)}", "invalid_type")
        if name not in allowed:
            can = ", ".join(allowed) if allowed else "none"
            message = f"{param}: the model {config.name!r} has no LoRA named {_shown_key(name)!r}; its LoRAs: {can}"
            raise _bad(param, message, "lora_not_found")
        if any(one["name"] == name for one in out):
            raise _bad(param, f"{param}: the LoRA {name!r} is already asked for; give each LoRA once", "duplicate_lora")
        scale = item.get("scale")
        if scale is None:
            scale = allowed[name].scale
        elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise _bad(param, f"{param}.scale must be a number, not {_type_name(scale)}", "invalid_type")
        elif not MIN_SCALE <= scale <= MAX_SCALE:
            raise _bad(param, f"{param}.scale must be between {MIN_SCALE:g} and {MAX_SCALE:g}; got {scale}")
        out.append(job_lora(name, float(scale), allowed[name]))
    return out


def choose_mode(image: str | None, last_image: str | None, images: list, videos: list, audios: list) -> Mode:
    """The mode from the input form (the seed's overview table); conflicts are errors."""
    if last_image is not None and image is None:
        raise _bad("last_image", "last_image needs image: first-and-last-frame takes both", "mode_conflict")
    refs = [k for k, v in (("images", images), ("videos", videos), ("audios", audios)) if v]
    if refs and (image is not None or last_image is not None):
        frame = "image" if image is not None else "last_image"
        raise _bad(
            refs[0],
            f"{refs[0]} cannot be combined with {frame}: image/last_image select image-to-video or "
            "first-and-last-frame, images/videos/audios select omni-reference",
            "mode_conflict",
        )
    if audios and not images and not videos:
        raise _bad("audios", "audios need at least one reference image or video (audio alone is not a mode)", "mode_conflict")
    if refs:
        return Mode.OMNI_REFERENCE
    if image is not None:
        return Mode.FIRST_AND_LAST_FRAME if last_image is not None else Mode.IMAGE_TO_VIDEO
    return Mode.TEXT_TO_VIDEO


def parse_create(body: Any, models: dict[str, ModelConfig]) -> CreateRequest:
    if not isinstance(body, dict):
        raise _bad(None, f"the request body must be a JSON object, not {_type_name(body)}", "invalid_body")  # type: ignore[arg-type]
    check_json_values(body)
    # 1. The model.
    model = body.get("model")
    if model is None:
        raise _bad("model", "model is required", "missing_field")
    if not isinstance(model, str):
        raise _bad("model", f"model must be a string, not {_type_name(model)}", "invalid_type")
    config = models.get(model)
    if config is None:
        raise _bad("model", f"the model {model!r} does not exist; one of: {', '.join(models)}", "model_not_found")
    # 2. The input form decides the mode.
    image, last_image = _string(body, "image"), _string(body, "last_image")
    image = _media_url(image, "image") if image is not None else None
    last_image = _media_url(last_image, "last_image") if last_image is not None else None
    images, videos, audios = (_media_list(body, k) for k in ("images", "videos", "audios"))
    mode = choose_mode(image, last_image, images, videos, audios)
    if mode not in config.modes:
        can = ", ".join(m.value for m in config.modes)
        raise _bad("model", f"the model {model!r} cannot do {mode.value}; it is configured for: {can}", "mode_not_supported")
    # 3. The prompt: required for text-to-video only.
    prompt = _string(body, "prompt")
    if prompt is None:
        if mode is Mode.TEXT_TO_VIDEO:
            raise _bad(
                "prompt", "prompt is required for text-to-video (no image, images, videos or audios given)", "missing_field"
            )
        prompt = ""
    if len(prompt) > MAX_PROMPT:
        raise _bad("prompt", f"prompt is {len(prompt)} characters; at most {MAX_PROMPT}")
    # 4. Duration, aspect ratio, extra_body.
    duration = parse_duration(body.get("duration"))
    aspect_ratio = parse_aspect_ratio(body.get("aspect_ratio"))
    extra, seed, negative, callback, options = _extra_body(body)
    tier, expires_after = _tier(extra)
    loras = parse_loras(extra, config)
    return CreateRequest(
        model=model,
        mode=mode,
        prompt=prompt,
        duration=duration,
        aspect_ratio=aspect_ratio,
        image=image,
        last_image=last_image,
        images=images,
        videos=videos,
        audios=audios,
        seed=seed,
        negative_prompt=negative,
        callback_url=callback,
        options=options,
        extra_body=extra,
        ignored_fields=ignored_fields(body),
        service_tier=tier,
        expires_after=expires_after,
        loras=loras,
    )
