"""Tiny, randomly initialised diffusers video pipelines, built offline, for tests and benchmarks.

Every pipeline is an instance of the real diffusers class (WanPipeline, WanImageToVideoPipeline,
WanVACEPipeline, LTXConditionPipeline, LTX2Pipeline) with a few-layer transformer, a
few-channel VAE and a tokenizer made in-process (no Hub, no sentencepiece file). ``build_all``
``save_pretrained``s them into a folder, so the engines load them through exactly the code path a
real checkpoint folder takes (``from_pretrained(path)``). ``write_models_toml`` points the four
seed model names (and ``ltx-video-480p``, and the two-stage ``ltx-two-stage-480p`` and
``ltx2-two-stage-720p`` with the tiny latent upsamplers) at those folders.

The values are the small configs diffusers' own pipeline tests use, with the adjustments they
need to run together (LTX-2's Gemma hidden size equals connector heads x head dim, for one).
Everything is seeded and put in ``eval()`` mode, so a build is reproducible.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

WORDS = (
    "a an the of in on with and at cat dog robot girl boy man woman dance dancing walks runs jumps video "
    "city night rain ocean beach forest street red blue green light camera slow fast"
).split()

# What the tests and the bench generate at: tiny grids, few steps. The output size is still the
# spec's table (864x480 ...): the engines resize.
TEST_FPS = 8


def _seed(n: int = 0) -> None:
    import torch

    torch.manual_seed(n)


def t5_tokenizer():
    """A T5 tokenizer from an in-memory Unigram vocabulary (pieces + scores), no model file."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -4.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("\u2581" + w, -1.0) for w in WORDS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def gemma_tokenizer():
    """A Gemma tokenizer from a byte-pair vocabulary trained in-process on a few sentences."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"],
        initial_alphabet=list(string.printable.strip()) + ["\u2581"],
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(WORDS)] * 10 + ["a robot dancing in the rain at night"] * 10, trainer)
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]  # GemmaTokenizer wants tuples
    return GemmaTokenizer(vocab=bpe.get_vocab(), merges=merges)


def _umt5(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    _seed()
    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def _t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    _seed()
    return T5EncoderModel(
        T5Config(  # type: ignore[call-arg]  # decoder_start_token_id: a PretrainedConfig kwarg the stub omits
            vocab_size=vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def _wan_vae():
    from diffusers import AutoencoderKLWan

    _seed()
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def wan_transformer(cls_name: str = "WanTransformer3DModel", *, width: int = 24, layers: int = 2, **kw: Any):
    """A Wan transformer: ``width`` = heads x head dim (2 heads). The bench uses width 256, 8 layers."""
    import diffusers

    _seed()
    heads = 2
    args = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=max(32, width),
        num_layers=layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    args.update(kw)
    return getattr(diffusers, cls_name)(**args)


def _wan_common():
    from diffusers import FlowMatchEulerDiscreteScheduler

    tok = t5_tokenizer()
    return dict(tokenizer=tok, text_encoder=_umt5(len(tok)), vae=_wan_vae(), scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))


def wan_t2v(*, two_experts: bool = False, width: int = 24, layers: int = 2):
    """WanPipeline; with ``two_experts`` a Wan 2.2 A14B-style pair (high-noise + low-noise)."""
    from diffusers import WanPipeline

    if two_experts:
        return WanPipeline(
            **_wan_common(),
            transformer=wan_transformer(width=width, layers=layers),
            transformer_2=wan_transformer(width=width, layers=layers),
            boundary_ratio=0.875,
        )
    return WanPipeline(**_wan_common(), transformer=wan_transformer(width=width, layers=layers), transformer_2=None)


def wan_i2v():
    """WanImageToVideoPipeline in the Wan 2.2 style (no CLIP): takes ``image`` and ``last_image``."""
    from diffusers import WanImageToVideoPipeline

    return WanImageToVideoPipeline(
        **_wan_common(), image_processor=None, image_encoder=None, transformer=wan_transformer(in_channels=36), transformer_2=None
    )


def wan_vace():
    from diffusers import WanVACEPipeline

    transformer = wan_transformer("WanVACETransformer3DModel", layers=3, vace_layers=[0, 2], vace_in_channels=96)
    return WanVACEPipeline(**_wan_common(), transformer=transformer, transformer_2=None)


def _ltx_vae():
    from diffusers import AutoencoderKLLTXVideo

    _seed()
    return AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )


def ltx_condition():
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXConditionPipeline, LTXVideoTransformer3DModel

    tok = t5_tokenizer()
    _seed()
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    )
    vae = _ltx_vae()
    return LTXConditionPipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=_t5(len(tok)), tokenizer=tok
    )


def _ltx2_vae():
    from diffusers import AutoencoderKLLTX2Video

    _seed()
    return AutoencoderKLLTX2Video(  # 4x spatial and temporal compression, in the encoder and the decoder alike
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1, 1),
        spatio_temporal_scaling=(True, True),
        decoder_spatio_temporal_scaling=(True, True),
        decoder_inject_noise=(False, False, False),
        downsample_type=("spatiotemporal", "spatiotemporal"),
        upsample_residual=(False, False),
        upsample_factor=(1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )


def ltx2():
    """LTX2Pipeline: joint video + audio (Gemma 3 text encoder, audio VAE, vocoder)."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tok = gemma_tokenizer()
    n = len(tok)
    _seed()
    text = dict(
        vocab_size=n,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=256,
        query_pre_attn_scalar=8,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4)
    text_encoder = Gemma3ForConditionalGeneration(
        Gemma3Config(
            text_config=text,
            vision_config=vision,
            mm_tokens_per_image=4,
            boi_token_index=n - 3,
            eoi_token_index=n - 2,
            image_token_index=n - 1,
        )
    )
    hidden = 32  # = connector heads (4) x head dim (8)
    _seed()
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        audio_in_channels=4,
        audio_out_channels=4,
        audio_num_attention_heads=2,
        audio_attention_head_dim=4,
        audio_cross_attention_dim=8,
        num_layers=2,
        qk_norm="rms_norm_across_heads",
        caption_channels=hidden,
        rope_double_precision=False,
        rope_type="split",
    )
    _seed()
    connectors = LTX2TextConnectors(
        caption_channels=hidden,
        text_proj_in_factor=text["num_hidden_layers"] + 1,
        video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=8,
        video_connector_num_layers=1,
        video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=4,
        audio_connector_attention_head_dim=8,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32,
        rope_theta=10000.0,
        rope_double_precision=False,
        causal_temporal_positioning=False,
        rope_type="split",
    )
    vae = _ltx2_vae()
    _seed()
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4,
        output_channels=2,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=None,
        in_channels=2,
        resolution=32,
        latent_channels=2,
        norm_type="pixel",
        causality_axis="height",
        dropout=0.0,
        mid_block_add_attention=False,
        sample_rate=16000,
        mel_hop_length=160,
        is_causal=True,
        mel_bins=8,
    )
    _seed()
    vocoder = LTX2Vocoder(
        in_channels=2 * 8,
        hidden_channels=32,
        out_channels=2,
        upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2],
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1,
        output_sampling_rate=16000,
    )
    return LTX2Pipeline(
        transformer=transformer,
        vae=vae,
        audio_vae=audio_vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tok,
        connectors=connectors,
        vocoder=vocoder,
        processor=None,
        prompt_enhancer=None,
        duration_head=None,
    )


def ltx_upsampler():
    """LTXLatentUpsamplePipeline as published (``ltxv-spatial-upscaler-0.9.7``: a latent upsampler and
    a VAE), for the tiny LTX pipeline's 8 latent channels; spatial x2."""
    from diffusers import LTXLatentUpsamplePipeline
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

    _seed(1)
    model = LTXLatentUpsamplerModel(in_channels=8, mid_channels=32, num_blocks_per_stage=1, dims=3)
    return LTXLatentUpsamplePipeline(vae=_ltx_vae(), latent_upsampler=model)


def ltx2_upsampler():
    """LTX2LatentUpsamplePipeline (a latent upsampler and a VAE), for the tiny LTX-2 pipeline's 4
    latent channels; spatial x2 through the rational resampler, as LTX-2's."""
    from diffusers import LTX2LatentUpsamplePipeline
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    _seed(1)
    model = LTX2LatentUpsamplerModel(in_channels=4, mid_channels=32, num_blocks_per_stage=1, dims=3, rational_spatial_scale=2.0)
    return LTX2LatentUpsamplePipeline(vae=_ltx2_vae(), latent_upsampler=model)


BUILDERS = {
    "wan-t2v": wan_t2v,
    "wan22-t2v": lambda: wan_t2v(two_experts=True),
    "wan-bench": lambda: wan_t2v(width=256, layers=8),  # the benchmarks' "small random Wan transformer"
    "wan-i2v": wan_i2v,
    "wan-vace": wan_vace,
    "ltx": ltx_condition,
    "ltx2": ltx2,
    "ltx-upsampler": ltx_upsampler,
    "ltx2-upsampler": ltx2_upsampler,
}


def eval_all(pipe):
    for component in pipe.components.values():
        if hasattr(component, "eval"):
            component.eval()  # fresh models are in train mode: T5 dropout would break determinism
    return pipe


def build(name: str, folder: Path):
    """Build one tiny pipeline and ``save_pretrained`` it into ``folder`` (returned pipeline is eval)."""
    pipe = eval_all(BUILDERS[name]())
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return pipe


def build_all(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Build the tiny pipelines the tests use (or ``names``) into ``root/<name>``, skipping
    folders already built."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names or [n for n in BUILDERS if n != "wan-bench"]:
        folder = root / name
        if not (folder / "model_index.json").exists():
            build(name, folder)
        out[name] = folder
    return out


def _toml_table(d: dict[str, Any]) -> str:
    lines = []
    for k, v in sorted(d.items(), key=lambda kv: kv[0] != "engine"):  # engine first
        if isinstance(v, dict):
            inner = ", ".join(f"{ik} = {json.dumps(iv)}" for ik, iv in v.items())
            lines.append(f"{k} = {{ {inner} }}")
        else:
            lines.append(f"{k} = {json.dumps(v if not isinstance(v, Path) else str(v))}")
    return "\n".join(lines)


def tiny_models(folders: dict[str, Path], *, fps: int = TEST_FPS, steps: int = 2) -> dict[str, dict[str, Any]]:
    """Model configs (the TOML's ``models`` table as a dict) for the tiny pipelines."""
    common = dict(steps=steps, native_fps=fps, dtype="float32", frames=41, guidance=1.0)
    wan = dict(common, engine="wan", overlap=5, guidance=2.0, max_area=32 * 16)
    p = {k: str(v) for k, v in folders.items()}
    wan_modes = {
        "text-to-video": dict(wan, checkpoint=p["wan-t2v"], extend_checkpoint=p["wan-vace"]),
        "image-to-video": dict(wan, checkpoint=p["wan-i2v"], extend_checkpoint=p["wan-vace"]),
        "first-and-last-frame": dict(wan, checkpoint=p["wan-i2v"], extend_checkpoint=p["wan-vace"]),
        "omni-reference": dict(wan, checkpoint=p["wan-vace"]),
    }
    wan22 = dict(wan_modes, **{"text-to-video": dict(wan_modes["text-to-video"], checkpoint=p["wan22-t2v"])})
    fbc = {"type": "FirstBlockCache", "threshold": 0.2}
    fast = {m: dict(s, cache=fbc) for m, s in wan_modes.items()}
    ltx = dict(common, engine="ltx", checkpoint=p["ltx"], overlap=9, max_area=32 * 32)
    ltx2_ = dict(
        common,
        engine="ltx2",
        checkpoint=p["ltx2"],
        overlap=9,
        max_area=32 * 32,
        call_kwargs={"stg_scale": 0.0, "modality_scale": 1.0, "audio_guidance_scale": 1.0},
    )
    two_stage = {}  # the two-stage recipe (``upsampler``): stage 1 at 32 x 32, refined at 64 x 64
    if "ltx-upsampler" in p:
        two_stage["ltx-two-stage-480p"] = dict(
            resolution="480p",
            fps=fps,
            default=dict(
                ltx,
                max_area=64 * 64,
                image_cond_noise_scale=0.0,
                upsampler=p["ltx-upsampler"],
                downscale_factor=0.5,
                refine_timesteps=[1000.0, 909.0, 725.0, 421.0, 0.0],
                denoise_strength=0.999,  # 4 of the 5
            ),
        )
    if "ltx2-upsampler" in p:
        two_stage["ltx2-two-stage-720p"] = dict(
            resolution="720p",
            fps=fps,
            default={
                **{k: v for k, v in ltx2_.items() if k != "steps"},
                "max_area": 64 * 64,
                "sigmas": [1.0, 0.909375],
                "upsampler": p["ltx2-upsampler"],
                "downscale_factor": 0.5,
            },
        )
    return {
        **two_stage,
        "jisudance2.0-480p": dict(resolution="480p", fps=fps, modes=wan_modes),
        "jisudance2.0-720p": dict(resolution="720p", fps=fps, modes=wan22),
        "jisudance2.0-fast-480p": dict(resolution="480p", fps=fps, modes=fast),
        "jisudance2.0-fast-720p": dict(resolution="720p", fps=fps, default=ltx2_),
        "ltx-video-480p": dict(resolution="480p", fps=fps, default=ltx),
    }


def write_models_toml(path: Path, folders: dict[str, Path], extra: dict[str, dict[str, Any]] | None = None, **kw: Any) -> Path:
    """Write a ``--config`` TOML that points the seed model names (and any ``extra`` models, in
    the shape ``tiny_models`` returns) at the tiny pipelines."""
    out = []
    for name, model in {**tiny_models(folders, **kw), **(extra or {})}.items():
        out.append(f'[models."{name}"]\nresolution = "{model["resolution"]}"\nfps = {model["fps"]}\n')
        if "default" in model:
            out.append(f'[models."{name}".default]\n{_toml_table(model["default"])}\n')
        for mode, spec in model.get("modes", {}).items():
            out.append(f'[models."{name}".modes."{mode}"]\n{_toml_table(spec)}\n')
    path.write_text("\n".join(out))
    return path
