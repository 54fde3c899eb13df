"""LoRA on the tiny real Wan pipeline: an adapter made here (peft ``LoraConfig`` on the tiny
transformer, saved with ``WanPipeline.save_lora_weights``), applied per task through the engine
and through HTTP, fused at load, and nothing of it left on the next task (also after a failed or
cancelled one)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from opendance.domain import Mode
from opendance.engines.base import Inputs
from opendance.engines import lora
from opendance.engines.lora import LoraAdapter, job_lora
from opendance.errors import Cancelled, EngineError
from opendance.testing import tiny_pipelines
from opendance.testing.server import LiveServer, wait_for_task

LORA = "grain"


def make_lora(folder: Path, out: Path, *, rank: int = 4, seed: int = 5, pipeline: str = "WanPipeline") -> Path:
    """A LoRA on every attention projection of the tiny transformer, random (non-zero) A and B,
    saved with the pipeline class's ``save_lora_weights``."""
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    cls = getattr(diffusers, pipeline)
    pipe = cls.from_pretrained(str(folder), local_files_only=True)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    pipe.transformer.add_adapter(config)
    cls.save_lora_weights(str(out), transformer_lora_layers=get_peft_model_state_dict(pipe.transformer), safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def lora_file(tiny_folders, tmp_path_factory) -> Path:
    return make_lora(tiny_folders["wan-t2v"], tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def copies(tiny_folders, tmp_path_factory) -> dict[str, Path]:
    """Copies of the tiny Wan text-to-video folder: each path is its own pipeline in a process
    (the pipeline cache is keyed by path), so one of them is fresh for a run "alone"."""
    root = tmp_path_factory.mktemp("wan-copies")
    out = {}
    for name in ("alone-lora", "alone-base", "mixed", "fused", "engine"):
        out[name] = root / name
        shutil.copytree(tiny_folders["wan-t2v"], out[name])
    return out


def spec_for(tiny_models, folder: Path, **changes) -> dict:
    t2v = tiny_models["jisudance2.0-480p"]["modes"]["text-to-video"]
    return {**{k: v for k, v in t2v.items() if k != "extend_checkpoint"}, "checkpoint": str(folder), **changes}


def frames_of(run_cls, engine, job, **kw) -> list[np.ndarray]:
    return run_cls(engine, job, Inputs(), **kw).frames


def test_lora_changes_the_video_and_leaves_nothing_behind(tiny_models, copies, lora_file, engines, make_job, run):
    spec = spec_for(tiny_models, copies["engine"])
    engine = engines(spec)
    base_job = make_job("jisudance2.0-480p", Mode.TEXT_TO_VIDEO, **spec)
    base = frames_of(run, engine, base_job)  # before any adapter was loaded: the base alone
    lora_job = make_job("jisudance2.0-480p", Mode.TEXT_TO_VIDEO, **spec)
    lora_job.loras = [job_lora(LORA, 1.0, LoraAdapter(path=lora_file))]
    with_lora = frames_of(run, engine, lora_job)
    diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(base, with_lora, strict=True))
    print(f"LoRA at scale 1 changes the frames by up to {diff}/255")
    assert diff > 0
    assert all(np.array_equal(a, b) for a, b in zip(base, frames_of(run, engine, base_job), strict=True))

    # A cancelled LoRA task, then a plain one: the base again, exactly.
    with pytest.raises(Cancelled):
        run(engine, lora_job, Inputs(), cancel_after=1)
    assert all(np.array_equal(a, b) for a, b in zip(base, frames_of(run, engine, base_job), strict=True))
    # An adapter that does not load fails its task with the name; the next tasks are unharmed.
    broken = make_job("jisudance2.0-480p", Mode.TEXT_TO_VIDEO, **spec)
    broken.loras = [job_lora("missing", 1.0, LoraAdapter(path=lora_file.parent / "nope.safetensors"))]
    with pytest.raises(EngineError, match="missing"):
        run(engine, broken, Inputs())
    assert all(np.array_equal(a, b) for a, b in zip(base, frames_of(run, engine, base_job), strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(with_lora, frames_of(run, engine, lora_job), strict=True))
    # Scale 0 is the base; another scale is another video.
    lora_job.loras = [job_lora(LORA, 0.0, LoraAdapter(path=lora_file))]
    assert all(np.array_equal(a, b) for a, b in zip(base, frames_of(run, engine, lora_job), strict=True))
    lora_job.loras = [job_lora(LORA, -2.0, LoraAdapter(path=lora_file))]
    assert any(not np.array_equal(a, b) for a, b in zip(with_lora, frames_of(run, engine, lora_job), strict=True))


def test_two_adapters_at_once_differ_from_each_alone(
    tiny_models, tiny_folders, copies, lora_file, engines, make_job, run, tmp_path
):
    second = make_lora(tiny_folders["wan-t2v"], tmp_path / "second", rank=2, seed=9)
    spec = spec_for(tiny_models, copies["engine"])
    engine = engines(spec)
    videos = {}
    for names in (("a",), ("b",), ("a", "b")):
        job = make_job("jisudance2.0-480p", Mode.TEXT_TO_VIDEO, **spec)
        paths = {"a": lora_file, "b": second}
        job.loras = [job_lora(n, 1.0, LoraAdapter(path=paths[n])) for n in names]
        videos[names] = np.stack(frames_of(run, engine, job))
    assert not np.array_equal(videos[("a",)], videos[("a", "b")])
    assert not np.array_equal(videos[("b",)], videos[("a", "b")])
    job = make_job("jisudance2.0-480p", Mode.TEXT_TO_VIDEO, **spec)
    job.loras = [job_lora("a", 1.0, LoraAdapter(path=lora_file))]
    assert np.array_equal(videos[("a",)], np.stack(frames_of(run, engine, job)))  # "b" is off again


@pytest.mark.parametrize(
    "model, pipeline", [("ltx-video-480p", "LTXConditionPipeline"), ("jisudance2.0-fast-720p", "LTX2Pipeline")]
)
def test_ltx_families_take_a_lora_too(model, pipeline, tiny_models, tiny_folders, engines, make_job, run, tmp_path):
    folder = tiny_folders["ltx" if pipeline.startswith("LTXC") else "ltx2"]
    path = make_lora(folder, tmp_path / "lora", pipeline=pipeline)
    job = make_job(model, Mode.TEXT_TO_VIDEO)
    engine = engines(job.engine)
    base = np.stack(frames_of(run, engine, job))
    job.loras = [job_lora(LORA, 1.0, LoraAdapter(path=path))]
    assert not np.array_equal(base, np.stack(frames_of(run, engine, job)))
    job.loras = []
    assert np.array_equal(base, np.stack(frames_of(run, engine, job)))


# -- hot-swap for a compiled transformer (lora.enable_hotswap before compiling): changing the
#    adapters, their scales or their number between tasks does not recompile it (dynamo's
#    error_on_recompile), and each task's video matches the plain per-request path.


def pipeline(folder):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_on(pipe, loras) -> np.ndarray:
    with lora.applied(pipe, loras), torch.inference_mode():
        return pipe(
            prompt="a cat",
            height=16,
            width=32,
            num_frames=5,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(1),
            output_type="np",
        ).frames


def test_hotswapped_adapters_do_not_recompile_and_match_the_plain_path(tiny_folders, tmp_path):
    folder = tiny_folders["wan-t2v"]
    one, two = make_lora(folder, tmp_path / "a"), make_lora(folder, tmp_path / "b", rank=2, seed=9)

    def a(scale=1.0):
        return lora.job_lora("a", scale, lora.LoraAdapter(path=one))

    def b(scale=1.0):
        return lora.job_lora("b", scale, lora.LoraAdapter(path=two))

    cases = [[a()], [], [b()], [a(0.5)], [], [a(), b(-1.0)], [a()]]
    plain = pipeline(folder)
    expected = [generate_on(plain, loras) for loras in cases]

    swapped = pipeline(folder)
    lora.enable_hotswap(swapped, target_rank=8)
    generate_on(swapped, cases[0])  # the first adapter fills the slots (the LoRA layers are made here)
    swapped.transformer.compile(backend="eager")
    generate_on(swapped, cases[0])  # compiled once, with the slots
    got = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for loras in cases:
            got.append(generate_on(swapped, loras))
    for loras, want, have in zip(cases, expected, got, strict=True):
        drift = float(np.abs(want - have).max())
        print(f"{[(x['name'], x['scale']) for x in loras]}: max drift {drift:.2e} against the plain path")
        assert drift <= 1e-5  # the padded rank sums in another order
    assert not np.array_equal(got[0], got[1]) and np.array_equal(got[1], expected[1])  # scale 0 slots add exactly nothing
    # The guard is really on: a float scale (what set_adapters writes) is a new guard, so a recompile.
    swapped.transformer.set_adapters(["slot0"], [0.3])
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(torch._dynamo.exc.RecompileError):
        generate_on(swapped, [])


def test_an_engine_with_lora_hotswap_rank_gives_the_plain_videos(tiny_models, copies, lora_file, engines, make_job, run):
    plain_spec = spec_for(tiny_models, copies["engine"])
    swap_spec = spec_for(tiny_models, copies["engine"], lora_hotswap_rank=8)
    plain, swapped = engines(plain_spec), engines(swap_spec)
    assert swapped.pipe is not plain.pipe and swapped.pipe._opendance_lora_slots == {}
    for loras in ([job_lora(LORA, 1.0, LoraAdapter(path=lora_file))], [], [job_lora(LORA, -1.5, LoraAdapter(path=lora_file))]):
        want, have = (make_job("jisudance2.0-480p", Mode.TEXT_TO_VIDEO, **spec) for spec in (plain_spec, swap_spec))
        want.loras = have.loras = loras
        assert np.array_equal(np.stack(frames_of(run, plain, want)), np.stack(frames_of(run, swapped, have)))


# -- through HTTP: one server, one engine process ---------------------------------------------

MODELS = {"alone-lora": "lora-alone-480p", "alone-base": "base-alone-480p", "mixed": "lora-480p", "fused": "lora-fused-480p"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_folders, tiny_models, copies, lora_file):
    root = tmp_path_factory.mktemp("lora-e2e")
    extra = {
        model: dict(resolution="480p", fps=8, modes={"text-to-video": spec_for(tiny_models, copies[key])})
        for key, model in MODELS.items()
        if key != "fused"
    }
    fused = spec_for(tiny_models, copies["fused"], loras=[LORA])
    extra[MODELS["fused"]] = dict(resolution="480p", fps=8, modes={"text-to-video": fused})
    config = tiny_pipelines.write_models_toml(root / "models.toml", tiny_folders, extra=extra)
    text = config.read_text()
    for model in (MODELS["alone-lora"], MODELS["mixed"]):  # the models a request may ask the LoRA for
        text = text.replace(f'[models."{model}"]\n', f'[models."{model}"]\nallowed_loras = ["{LORA}", "other"]\n')
    text = f'[loras."{LORA}"]\npath = "{lora_file}"\nscale = 0.75\n\n[loras."other"]\npath = "{lora_file}"\n\n' + text
    config.write_text(text)
    env = {"OPENDANCE_LOG_LEVEL": "info", "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(root / "data", config=config, env=env, startup_timeout=120) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def generate(client, model: str, loras: list | None = None) -> tuple[dict, bytes]:
    extra: dict = {"seed": 11}
    if loras is not None:
        extra["loras"] = loras
    r = client.post("/v1/video/generations", json={"model": model, "prompt": "a robot dancing", "extra_body": extra})
    assert r.status_code == 200, r.text
    task = wait_for_task(client, r.json()["id"], timeout=300)
    assert task["status"] == "completed", task
    return task, client.get(f"/v1/video/generations/{task['id']}/content").content


def decoded(mp4: bytes, tmp_path: Path, name: str) -> np.ndarray:
    path = tmp_path / f"{name}.mp4"
    path.write_bytes(mp4)
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_alternating_tasks_give_what_each_gives_alone(client, tmp_path):
    asked = [{"name": LORA, "scale": 1.0}]
    # Each "alone" model is its own fresh pipeline in the engine process (same weights).
    task, lora_alone = generate(client, MODELS["alone-lora"], asked)
    assert task["loras"] == [{"name": LORA, "scale": 1.0}] and task["extra_body"]["loras"] == asked
    task, base_alone = generate(client, MODELS["alone-base"])
    assert task["loras"] == []
    assert lora_alone != base_alone
    for i in range(2):
        task, plain = generate(client, MODELS["mixed"])
        assert plain == base_alone, f"plain task {i} after a LoRA task differs from the plain one alone"
        task, with_lora = generate(client, MODELS["mixed"], asked)
        assert with_lora == lora_alone, f"LoRA task {i} differs from the LoRA task alone"
    # The adapter's configured scale when the request gives none.
    task, default_scale = generate(client, MODELS["mixed"], [{"name": LORA}])
    assert task["loras"] == [{"name": LORA, "scale": 0.75}]
    assert default_scale not in (with_lora, base_alone)


def test_fused_at_load_equals_the_request_at_that_scale(client, tmp_path):
    _, fused = generate(client, MODELS["fused"])
    _, per_request = generate(client, MODELS["mixed"], [{"name": LORA, "scale": 0.75}])  # the table's scale
    _, base = generate(client, MODELS["alone-base"])
    a, b, c = (decoded(m, tmp_path, n) for m, n in ((fused, "fused"), (per_request, "request"), (base, "base")))
    drift = int(np.abs(a.astype(int) - b.astype(int)).max())
    print(f"fused vs per-request at scale 0.75: max {drift}/255 in the decoded frames (mp4 bytes equal: {fused == per_request})")
    assert drift <= 1  # fusing adds the same delta into the weight (float rounding apart)
    assert int(np.abs(a.astype(int) - c.astype(int)).max()) > drift  # and it is not the base


def test_models_card_lists_the_allowed_loras(client):
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert cards[MODELS["mixed"]]["loras"] == [LORA, "other"]
    assert cards[MODELS["fused"]]["loras"] == []  # fused ones are part of the model, not a choice


BAD = [
    ({"loras": {"name": LORA}}, "extra_body.loras", "invalid_type"),
    ({"loras": ["grain"]}, "extra_body.loras[0]", "invalid_type"),
    ({"loras": [{"name": LORA}, None]}, "extra_body.loras[1]", "invalid_type"),
    ({"loras": [{"name": "nope"}]}, "extra_body.loras[0]", "lora_not_found"),
    ({"loras": [{"name": 3}]}, "extra_body.loras[0]", "invalid_type"),
    ({"loras": [{"scale": 1}]}, "extra_body.loras[0]", "invalid_type"),
    ({"loras": [{"name": LORA, "scale": 4.5}]}, "extra_body.loras[0]", "invalid_value"),
    ({"loras": [{"name": LORA, "scale": -4.01}]}, "extra_body.loras[0]", "invalid_value"),
    ({"loras": [{"name": LORA, "scale": "1"}]}, "extra_body.loras[0]", "invalid_type"),
    ({"loras": [{"name": LORA, "scale": True}]}, "extra_body.loras[0]", "invalid_type"),
    ({"loras": [{"name": LORA, "weight": 1}]}, "extra_body.loras[0]", "invalid_value"),
    ({"loras": [{"name": LORA}, {"name": "other"}, {"name": LORA}]}, "extra_body.loras[2]", "duplicate_lora"),
    (
        {"loras": [{"name": LORA}, {"name": "other"}] + [{"name": f"x{i}"} for i in range(3)]},
        "extra_body.loras[4]",
        "invalid_value",
    ),
]


@pytest.mark.parametrize("extra, param, code", BAD)
def test_every_bad_loras_item_is_a_400_naming_it(client, extra, param, code):
    r = client.post("/v1/video/generations", json={"model": MODELS["mixed"], "prompt": "x", "extra_body": extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert param in error["message"]


def test_a_lora_not_allowed_for_the_model_is_a_400(client):
    for model in (MODELS["alone-base"], MODELS["fused"]):  # the fused model lists none to ask for
        r = client.post("/v1/video/generations", json={"model": model, "prompt": "x", "extra_body": {"loras": [{"name": LORA}]}})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "extra_body.loras[0]" and r.json()["error"]["code"] == "lora_not_found"
    assert client.get("/v1/video/generations", params={"limit": 100}).status_code == 200


# -- the models file ---------------------------------------------------------------------------

WAN = 'engine = "wan"\ncheckpoint = "/m/wan"\nframes = 81\noverlap = 9\nnative_fps = 16\n'


@pytest.mark.parametrize(
    "text, message",
    [
        ('[models.m]\nresolution = "480p"\nallowed_loras = ["nope"]\n[models.m.default]\n' + WAN, "models.m.allowed_loras: no"),
        ('[models.m]\nresolution = "480p"\n[models.m.default]\n' + WAN + 'loras = ["nope"]\n', "models.m.default.loras[0]"),
        ('[models.m]\nresolution = "480p"\n[models.m.default]\n' + WAN + 'loras = ["x", "x"]\n', "listed twice"),
        (
            '[models.m]\nresolution = "480p"\n[models.m.default]\n' + WAN + 'loras = [{name = "x", scale = 9}]\n',
            "less than or equal",
        ),
        ('[models.m]\nresolution = "480p"\nallowed_loras = ["x"]\n[models.m.default]\nengine = "preview"\n', "applies no LoRA"),
        ('[models.m]\nresolution = "480p"\n[models.m.default]\n' + WAN + '[loras.y]\npath = "/l"\nscael = 1\n', "loras.y"),
    ],
)
def test_a_bad_loras_setting_stops_the_models_file(tmp_path, text, message):
    from opendance.config import load_models

    path = tmp_path / "models.toml"
    path.write_text('[loras.x]\npath = "/l/x.safetensors"\n' + text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_models(path)


def test_the_models_file_resolves_loras(tmp_path):
    from opendance.config import load_models

    path = tmp_path / "models.toml"
    text = '[loras.x]\npath = "/l/x.safetensors"\nscale = 0.5\n[loras.y]\npath = "/l/high"\npath_2 = "/l/low"\n'
    text += '[models.m]\nresolution = "480p"\nallowed_loras = ["y"]\n[models.m.default]\n' + WAN + 'loras = ["x"]\n'
    text += '[models.m.modes."text-to-video"]\nloras = [{name = "x", scale = 1.5}, "y"]\n'
    path.write_text(text)
    model = load_models(path)["m"]
    assert list(model.allowed_loras) == ["y"] and str(model.allowed_loras["y"].path_2) == "/l/low"
    fused = {mode.value: [(f["name"], f["scale"]) for f in spec.options["loras"]] for mode, spec in model.modes.items()}
    assert fused["image-to-video"] == [("x", 0.5)] and fused["text-to-video"] == [("x", 1.5), ("y", 1.0)]


def test_preflight_names_a_missing_lora_file(tmp_path, tiny_folders, lora_file):
    from opendance.config import load_models
    from opendance.engines.preflight import problems

    path = tmp_path / "models.toml"
    folder = tiny_folders["wan-t2v"]
    table = f'engine = "wan"\ncheckpoint = "{folder}"\nframes = 41\noverlap = 5\nnative_fps = 16\n'
    text = f'[loras.here]\npath = "{lora_file}"\n[loras.gone]\npath = "{tmp_path}/gone.safetensors"\n'
    text += f'[loras.low]\npath = "{lora_file}"\npath_2 = "{tmp_path}/low"\n'
    text += '[models.m]\nresolution = "480p"\nfps = 16\nallowed_loras = ["gone"]\n[models.m.default]\n' + table
    text += 'loras = ["here", "low"]\n'
    path.write_text(text)
    found = problems(load_models(path))
    assert len(found) == 2, found
    assert "path of LoRA 'gone'" in found[1] and "path_2 of LoRA 'low'" in found[0]
