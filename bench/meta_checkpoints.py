"""Checkpoint folders at the real models' sizes without their weights, for ``opendance models
check``: every component is built on the meta device from its published config (diffusers /
transformers classes; no download), and saved as a sparse safetensors file whose header holds
the real names, shapes and dtypes (the data region is a hole, plus a marker that makes the same
published weights the same in every folder: Wan's UMT5, VAE and CLIP; each transformer its own).

    PYTHONPATH=. .venv/bin/python bench/meta_checkpoints.py /tmp/meta-models
    sed 's#"/models/#"/tmp/meta-models/#' opendance/models.example.toml > /tmp/meta.toml
    opendance models check --config /tmp/meta.toml --devices cuda:0 --device-memory 80GiB

docs/models.md's memory table is this output. What is not the published config: LTX-2.3 is
built with diffusers' LTX-2 defaults (the 19B LTX-2 transformer) and Gemma 3 12B's text model
only (the checkpoint's vision tower, about 0.4B, is left out); LTX-Video 0.9.7's VAE with
diffusers' default ``AutoencoderKLLTXVideo`` (small either way); the two latent upsamplers
(``ltxv-spatial-upscaler-0.9.7``, LTX-2.3's x2 spatial upscaler) with their classes' default
configs (128 latent channels; 512 and 1024 middle channels, 4 blocks per stage).
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import torch

WAN_14B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
ST = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}


def save_sparse(
    model: torch.nn.Module, folder: Path, config: dict, dtype: torch.dtype, marker: str, name="diffusion_pytorch_model"
) -> None:
    """``folder/<name>.safetensors`` with the model's header and a hole for its data."""
    folder.mkdir(parents=True, exist_ok=True)
    header, offset, seen = {}, 0, set()
    for key, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:  # a tied weight (T5's embeddings) is stored once, as save_pretrained does
            continue
        seen.add(id(t))
        dt = dtype if t.is_floating_point() else t.dtype
        n = t.numel() * torch.empty((), dtype=dt, device="meta").element_size()
        header[key] = {"dtype": ST[dt], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = folder / f"{name}.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.write(hashlib.sha256(marker.encode()).digest())
        f.truncate(8 + len(raw) + offset)
    (folder / "config.json").write_text(json.dumps(config))


def meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.device("meta"):
        return build()


WAN21_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2)
WAN22_VAE = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    latents_mean=[0.0] * 48,
    latents_std=[1.0] * 48,
)


def wan_folder(
    root: Path, name: str, cls: str, transformers: dict[str, dict], clip: bool, extra: dict | None = None, vae: dict = WAN21_VAE
) -> None:
    import diffusers
    import transformers as tf

    folder = root / name
    index = {
        "_class_name": cls,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
    }
    umt5 = tf.UMT5Config(
        vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"
    )
    save_sparse(
        meta(lambda: tf.UMT5EncoderModel(umt5)), folder / "text_encoder", umt5.to_dict(), torch.bfloat16, "umt5-xxl", "model"
    )
    index["text_encoder"] = ["transformers", "UMT5EncoderModel"]
    marker = "wan2.1-vae" if vae is WAN21_VAE else "wan2.2-vae"
    save_sparse(meta(lambda: diffusers.AutoencoderKLWan(**vae)), folder / "vae", vae, torch.float32, marker)
    index["vae"] = ["diffusers", "AutoencoderKLWan"]
    for slot, config in transformers.items():
        vace = "vace_layers" in config
        klass = diffusers.WanVACETransformer3DModel if vace else diffusers.WanTransformer3DModel
        save_sparse(meta(lambda c=config, k=klass: k(**c)), folder / slot, config, torch.bfloat16, f"{name}/{slot}")
        index[slot] = ["diffusers", klass.__name__]
    if "transformer_2" not in index:
        index["transformer_2"] = [None, None]
    if clip:
        cfg = tf.CLIPVisionConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            patch_size=14,
            image_size=224,
            projection_dim=1024,
        )
        save_sparse(
            meta(lambda: tf.CLIPVisionModel(cfg)),
            folder / "image_encoder",
            cfg.to_dict(),
            torch.float32,
            "clip-vit-h-14",
            "model",
        )
        index["image_encoder"] = ["transformers", "CLIPVisionModel"]
        index["image_processor"] = ["transformers", "CLIPImageProcessor"]
    index.update(extra or {})
    (folder / "model_index.json").write_text(json.dumps(index))


def ltx2_folder(root: Path, name: str) -> None:
    import diffusers
    import transformers as tf
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    folder = root / name
    index = {
        "_class_name": "LTX2Pipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "tokenizer": ["transformers", "GemmaTokenizer"],
    }
    parts = {
        "transformer": (diffusers.LTX2VideoTransformer3DModel, torch.bfloat16),
        "vae": (diffusers.AutoencoderKLLTX2Video, torch.bfloat16),
        "audio_vae": (diffusers.AutoencoderKLLTX2Audio, torch.bfloat16),
        "connectors": (LTX2TextConnectors, torch.bfloat16),
        "vocoder": (LTX2Vocoder, torch.bfloat16),
    }
    for slot, (klass, dtype) in parts.items():
        model = meta(klass)
        save_sparse(model, folder / slot, dict(model.config), dtype, f"{name}/{slot}")
        index[slot] = ["diffusers", klass.__name__]
    gemma = tf.Gemma3TextConfig(
        vocab_size=262208,
        hidden_size=3840,
        intermediate_size=15360,
        num_hidden_layers=48,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
    )
    save_sparse(
        meta(lambda: tf.Gemma3TextModel(gemma)), folder / "text_encoder", gemma.to_dict(), torch.bfloat16, "gemma-3-12b", "model"
    )
    index["text_encoder"] = ["transformers", "Gemma3ForConditionalGeneration"]
    (folder / "model_index.json").write_text(json.dumps(index))


def ltx_folder(root: Path, name: str) -> None:
    import diffusers
    import transformers as tf

    folder = root / name
    index = {
        "_class_name": "LTXConditionPipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
    }
    config = dict(num_attention_heads=32, attention_head_dim=128, cross_attention_dim=4096, num_layers=48, caption_channels=4096)
    save_sparse(
        meta(lambda: diffusers.LTXVideoTransformer3DModel(**config)),
        folder / "transformer",
        config,
        torch.bfloat16,
        f"{name}/transformer",
    )
    index["transformer"] = ["diffusers", "LTXVideoTransformer3DModel"]
    vae = meta(diffusers.AutoencoderKLLTXVideo)
    save_sparse(vae, folder / "vae", dict(vae.config), torch.bfloat16, f"{name}/vae")
    index["vae"] = ["diffusers", "AutoencoderKLLTXVideo"]
    t5 = tf.T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"
    )
    save_sparse(
        meta(lambda: tf.T5EncoderModel(t5)), folder / "text_encoder", t5.to_dict(), torch.bfloat16, "t5-v1_1-xxl", "model"
    )
    index["text_encoder"] = ["transformers", "T5EncoderModel"]
    (folder / "model_index.json").write_text(json.dumps(index))


def upsampler_folder(root: Path, name: str, pipeline: str, klass: Callable[[], torch.nn.Module], class_name: str) -> None:
    """A latent upsampler folder as published (``LTXLatentUpsamplePipeline`` /
    ``LTX2LatentUpsamplePipeline``): its ``latent_upsampler`` at the class's default config, which
    is the published one. The folder's VAE copy is left out (the engines use the main
    pipeline's VAE; the memory plan does not count it)."""
    folder = root / name
    model = meta(klass)
    save_sparse(model, folder / "latent_upsampler", {"_class_name": class_name, **dict(model.config)}, torch.bfloat16, name)
    index = {"_class_name": pipeline, "latent_upsampler": ["diffusers", class_name], "vae": [None, None]}
    (folder / "model_index.json").write_text(json.dumps(index))


def main(root: Path) -> None:
    i2v21 = {**WAN_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}
    wan_folder(root, "Wan2.1-T2V-14B-Diffusers", "WanPipeline", {"transformer": WAN_14B}, clip=False)
    wan_folder(root, "Wan2.1-I2V-14B-480P-Diffusers", "WanImageToVideoPipeline", {"transformer": i2v21}, clip=True)
    wan_folder(root, "Wan2.1-I2V-14B-720P-Diffusers", "WanImageToVideoPipeline", {"transformer": i2v21}, clip=True)
    wan_folder(
        root,
        "Wan2.1-FLF2V-14B-720P-diffusers",
        "WanImageToVideoPipeline",
        {"transformer": {**i2v21, "pos_embed_seq_len": 514}},
        clip=True,
    )
    vace = {**WAN_14B, "vace_layers": list(range(0, 40, 5)), "vace_in_channels": 96}
    wan_folder(root, "Wan2.1-VACE-14B-diffusers", "WanVACEPipeline", {"transformer": vace}, clip=False)
    two = {"boundary_ratio": 0.875}
    wan_folder(root, "Wan2.2-T2V-A14B-Diffusers", "WanPipeline", {"transformer": WAN_14B, "transformer_2": WAN_14B}, False, two)
    i2v22 = {**WAN_14B, "in_channels": 36}
    wan_folder(
        root,
        "Wan2.2-I2V-A14B-Diffusers",
        "WanImageToVideoPipeline",
        {"transformer": i2v22, "transformer_2": i2v22},
        False,
        {"boundary_ratio": 0.9},
    )
    ti2v = {**WAN_14B, "num_attention_heads": 24, "ffn_dim": 14336, "num_layers": 30, "in_channels": 48, "out_channels": 48}
    wan_folder(
        root, "Wan2.2-TI2V-5B-Diffusers", "WanPipeline", {"transformer": ti2v}, False, {"expand_timesteps": True}, WAN22_VAE
    )
    ltx2_folder(root, "LTX-2.3-Distilled-Diffusers")
    ltx_folder(root, "LTX-Video-0.9.7-distilled")
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    upsampler_folder(
        root, "ltxv-spatial-upscaler-0.9.7", "LTXLatentUpsamplePipeline", LTXLatentUpsamplerModel, "LTXLatentUpsamplerModel"
    )
    upsampler_folder(
        root,
        "LTX-2.3-spatial-upscaler-x2-Diffusers",
        "LTX2LatentUpsamplePipeline",
        LTX2LatentUpsamplerModel,
        "LTX2LatentUpsamplerModel",
    )
    print(f"sparse checkpoint folders under {root}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/meta-models"))
