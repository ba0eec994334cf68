"""The files Wan users hold, synthesized tiny in each real layout and naming, and what is made of them.

The original names are derived from Wan's module definitions (its VAE's and T5's module trees, as
published), not from the converter under test: a file written from them must load with every key
mapped, into modules that compute what the diffusers- and transformers-format copies compute.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file
from transformers import UMT5EncoderModel

import worldsim
from models.checkpoint import CheckpointError
from models.original_wan import (
    convert_t5_state_dict,
    load_original_umt5,
    load_original_vae,
    umt5_config_from_shapes,
)
from models.streaming_vae import StreamingDecoder, StreamingEncoder, from_uint8_frames
from models.text import UMT5TextEncoder, clean_prompt
from tests.test_bundle import build_tokenizer
from tests.test_checkpoint import to_original_name
from worldsim.bundle import BundleError, LoadOptions
from worldsim.inspect import inspect_path

TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
    text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
)  # fmt: skip
VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True])
T5 = dict(layers=2, heads=2, d_kv=8, d_model=16, d_ff=32, buckets=8)
SIZE = (32, 32)
PROMPT = "a sunny meadow with flowers"


# ---------------------------------------------------------------------------------------------
# Wan's names, from its module definitions
# ---------------------------------------------------------------------------------------------


def wan_vae_shapes(base: int, z: int, mult: list[int], blocks: int, temporal: list[bool]) -> dict[str, tuple]:
    """Every parameter of Wan's WanVAE and its shape: encoder/decoder conv1, downsamples/upsamples
    (residual: 0 RMS gamma, 2 conv, 3 gamma, 6 conv, shortcut; resample: resample.1, time_conv),
    middle (residual, attention, residual), head (0 gamma, 2 conv), and the quant convs conv1/conv2."""
    shapes: dict[str, tuple] = {}

    def residual(prefix: str, c_in: int, c_out: int) -> None:
        shapes[f"{prefix}.residual.0.gamma"] = (c_in, 1, 1, 1)
        shapes[f"{prefix}.residual.2.weight"], shapes[f"{prefix}.residual.2.bias"] = (
            (c_out, c_in, 3, 3, 3),
            (c_out,),
        )
        shapes[f"{prefix}.residual.3.gamma"] = (c_out, 1, 1, 1)
        shapes[f"{prefix}.residual.6.weight"], shapes[f"{prefix}.residual.6.bias"] = (
            (c_out, c_out, 3, 3, 3),
            (c_out,),
        )
        if c_in != c_out:
            shapes[f"{prefix}.shortcut.weight"], shapes[f"{prefix}.shortcut.bias"] = (
                (c_out, c_in, 1, 1, 1),
                (c_out,),
            )

    def middle(part: str, c: int) -> None:
        residual(f"{part}.middle.0", c, c)
        shapes[f"{part}.middle.1.norm.gamma"] = (c, 1, 1)
        shapes[f"{part}.middle.1.to_qkv.weight"], shapes[f"{part}.middle.1.to_qkv.bias"] = (
            (3 * c, c, 1, 1),
            (3 * c,),
        )
        shapes[f"{part}.middle.1.proj.weight"], shapes[f"{part}.middle.1.proj.bias"] = (c, c, 1, 1), (c,)
        residual(f"{part}.middle.2", c, c)

    dims = [base * m for m in [1, *mult]]
    shapes["encoder.conv1.weight"], shapes["encoder.conv1.bias"] = (dims[0], 3, 3, 3, 3), (dims[0],)
    index = 0
    for level, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
        for _ in range(blocks):
            residual(f"encoder.downsamples.{index}", c_in, c_out)
            c_in, index = c_out, index + 1
        if level < len(mult) - 1:
            shapes[f"encoder.downsamples.{index}.resample.1.weight"] = (c_out, c_out, 3, 3)
            shapes[f"encoder.downsamples.{index}.resample.1.bias"] = (c_out,)
            if temporal[level]:
                shapes[f"encoder.downsamples.{index}.time_conv.weight"] = (c_out, c_out, 3, 1, 1)
                shapes[f"encoder.downsamples.{index}.time_conv.bias"] = (c_out,)
            index += 1
    middle("encoder", dims[-1])
    shapes["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    shapes["encoder.head.2.weight"], shapes["encoder.head.2.bias"] = (2 * z, dims[-1], 3, 3, 3), (2 * z,)
    shapes["conv1.weight"], shapes["conv1.bias"] = (2 * z, 2 * z, 1, 1, 1), (2 * z,)
    shapes["conv2.weight"], shapes["conv2.bias"] = (z, z, 1, 1, 1), (z,)

    up = [base * m for m in [mult[-1], *mult[::-1]]]
    shapes["decoder.conv1.weight"], shapes["decoder.conv1.bias"] = (up[0], z, 3, 3, 3), (up[0],)
    middle("decoder", up[0])
    index = 0
    up_temporal = temporal[::-1]
    for level, (c_in, c_out) in enumerate(itertools.pairwise(up)):
        if level > 0:
            c_in //= 2  # the upsampling before this level halves the channels
        for _ in range(blocks + 1):
            residual(f"decoder.upsamples.{index}", c_in, c_out)
            c_in, index = c_out, index + 1
        if level < len(mult) - 1:
            shapes[f"decoder.upsamples.{index}.resample.1.weight"] = (c_out // 2, c_out, 3, 3)
            shapes[f"decoder.upsamples.{index}.resample.1.bias"] = (c_out // 2,)
            if up_temporal[level]:
                shapes[f"decoder.upsamples.{index}.time_conv.weight"] = (2 * c_out, c_out, 3, 1, 1)
                shapes[f"decoder.upsamples.{index}.time_conv.bias"] = (2 * c_out,)
            index += 1
    shapes["decoder.head.0.gamma"] = (up[-1], 1, 1, 1)
    shapes["decoder.head.2.weight"], shapes["decoder.head.2.bias"] = (3, up[-1], 3, 3, 3), (3,)
    return shapes


def wan_t5_state(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in Wan's T5 encoder names: token_embedding, per block norm1, attn.{q,k,v,o},
    norm2, ffn.gate.0 (the GELU branch), ffn.fc1, ffn.fc2 and its own pos_embedding; norm."""
    generator = torch.Generator().manual_seed(seed)
    d, inner, ff = T5["d_model"], T5["heads"] * T5["d_kv"], T5["d_ff"]
    state = {
        "token_embedding.weight": torch.randn(vocab, d, generator=generator),
        "norm.weight": 1 + 0.1 * torch.randn(d, generator=generator),
    }
    for n in range(T5["layers"]):
        p = f"blocks.{n}."
        state |= {
            p + "norm1.weight": 1 + 0.1 * torch.randn(d, generator=generator),
            p + "attn.q.weight": torch.randn(inner, d, generator=generator) * 0.3,
            p + "attn.k.weight": torch.randn(inner, d, generator=generator) * 0.3,
            p + "attn.v.weight": torch.randn(inner, d, generator=generator) * 0.3,
            p + "attn.o.weight": torch.randn(d, inner, generator=generator) * 0.3,
            p + "norm2.weight": 1 + 0.1 * torch.randn(d, generator=generator),
            p + "ffn.gate.0.weight": torch.randn(ff, d, generator=generator) * 0.3,
            p + "ffn.fc1.weight": torch.randn(ff, d, generator=generator) * 0.3,
            p + "ffn.fc2.weight": torch.randn(d, ff, generator=generator) * 0.3,
            p + "pos_embedding.embedding.weight": torch.randn(
                T5["buckets"], T5["heads"], generator=generator
            ),
        }
    return state


def wan_t5_reference(state: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Wan's T5 encoder computed from its published definition: pre-norm blocks of unscaled attention
    with a per-layer relative position bias (bidirectional buckets, exact below half of each sign's
    buckets, logarithmic up to distance 128), and a gated feed-forward whose gate goes through the
    tanh-approximated GELU; RMS norms with eps 1e-6."""

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def bucket(relative: torch.Tensor) -> torch.Tensor:
        half = T5["buckets"] // 2
        exact = half // 2
        distance = relative.abs()
        large = (
            exact
            + (
                torch.log(distance.float().clamp_min(1) / exact) / math.log(128 / exact) * (half - exact)
            ).long()
        )
        large = large.clamp_max(half - 1)
        return (relative > 0).long() * half + torch.where(distance < exact, distance, large)

    x = state["token_embedding.weight"][ids]  # (B, L, d)
    length, heads, d_kv = ids.shape[1], T5["heads"], T5["d_kv"]
    positions = torch.arange(length)
    buckets = bucket(positions[None, :] - positions[:, None])  # key - query
    for n in range(T5["layers"]):
        p = f"blocks.{n}."
        h = rms(x, state[p + "norm1.weight"])
        q, k, v = (h @ state[p + f"attn.{w}.weight"].T for w in "qkv")
        q, k, v = (t.view(*t.shape[:2], heads, d_kv).transpose(1, 2) for t in (q, k, v))
        bias = state[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)  # (heads, L, L)
        weights = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)
        x = x + (weights @ v).transpose(1, 2).reshape(*x.shape[:2], -1) @ state[p + "attn.o.weight"].T
        h = rms(x, state[p + "norm2.weight"])
        gate = h @ state[p + "ffn.gate.0.weight"].T
        gelu = 0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
        x = x + ((h @ state[p + "ffn.fc1.weight"].T) * gelu) @ state[p + "ffn.fc2.weight"].T
    return rms(x, state["norm.weight"])


# ---------------------------------------------------------------------------------------------
# A tiny original Wan2.1 folder
# ---------------------------------------------------------------------------------------------


def original_transformer_files(folder: Path, model: WanTransformer3DModel, shards: int = 1) -> None:
    """config.json (WanModel) and the weights in Wan's names, whole or in shards with their index."""
    config = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 24, "eps": 1e-6,
              "ffn_dim": 32, "freq_dim": 32, "in_dim": 16, "model_type": "t2v", "num_heads": 2,
              "num_layers": 2, "out_dim": 16, "text_len": 512}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    state = {to_original_name(k): v.clone().contiguous() for k, v in model.state_dict().items()}
    if shards == 1:
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
        return
    names = sorted(state)
    weight_map = {}
    for shard in range(shards):
        file = f"diffusion_pytorch_model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = names[shard::shards]
        save_file({n: state[n] for n in part}, str(folder / file))
        weight_map |= dict.fromkeys(part, file)
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_original(tmp_path_factory.mktemp("Wan2.1-T2V-tiny"))


def build_original(folder: Path) -> Path:
    """A tiny original Wan2.1-T2V folder: config.json, weights, Wan2.1_VAE.pth, the T5 file, tokenizer."""
    torch.manual_seed(5)
    original_transformer_files(folder, WanTransformer3DModel(**TRANSFORMER))
    generator = torch.Generator().manual_seed(6)
    vae = {
        name: torch.randn(shape, generator=generator) * 0.2
        for name, shape in wan_vae_shapes(8, 16, [1, 2, 2], 1, [True, True]).items()
    }
    for name in vae:
        if name.endswith("gamma"):
            vae[name] = 1 + vae[name] * 0.1
    torch.save(vae, folder / "Wan2.1_VAE.pth")
    tokenizer = build_tokenizer(folder / "google" / "umt5-xxl")
    t5 = {k: v.to(torch.bfloat16) for k, v in wan_t5_state(len(tokenizer)).items()}
    torch.save(t5, folder / "models_t5_umt5-xxl-enc-bf16.pth")
    return folder


class Sneaky:
    """An object a weights-only unpickler must refuse."""


def load_original(folder: Path, **options) -> worldsim.World:
    return worldsim.load(folder, options=LoadOptions(size=SIZE, **options))


# ---------------------------------------------------------------------------------------------
# Tests: the original folder
# ---------------------------------------------------------------------------------------------


def test_the_vae_file_converts_with_every_key_mapped(original: Path, tmp_path: Path) -> None:
    vae = load_original_vae(original / "Wan2.1_VAE.pth")
    assert (vae.config.base_dim, vae.config.z_dim, list(vae.config.dim_mult)) == (8, 16, [1, 2, 2])
    assert vae.config.num_res_blocks == 1 and list(vae.config.temperal_downsample) == [True, True]
    raw = torch.load(original / "Wan2.1_VAE.pth", weights_only=True)
    assert len(vae.state_dict()) == len(raw)  # one diffusers key per Wan key, none left over
    # the same weights in a diffusers folder make the same codes and frames
    vae.save_pretrained(tmp_path / "vae")
    copy = AutoencoderKLWan.from_pretrained(tmp_path / "vae")
    mean, std = list(vae.config.latents_mean), list(vae.config.latents_std)
    video = from_uint8_frames(np.random.default_rng(0).integers(0, 256, (1, 5, 32, 32, 3), dtype=np.uint8))
    codes = [
        StreamingEncoder(v, mean, std).encode(video, StreamingEncoder(v, mean, std).new_state())
        for v in (vae, copy)
    ]
    torch.testing.assert_close(codes[0], codes[1], atol=1e-5, rtol=0)
    frames = [
        StreamingDecoder(v, mean, std).decode(codes[0], StreamingDecoder(v, mean, std).new_state())
        for v in (vae, copy)
    ]
    torch.testing.assert_close(frames[0], frames[1], atol=1e-5, rtol=0)


def test_the_t5_file_computes_what_wans_encoder_computes(original: Path) -> None:
    state = {
        k: v.float()
        for k, v in torch.load(original / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True).items()
    }
    model = load_original_umt5(original / "models_t5_umt5-xxl-enc-bf16.pth")
    config = umt5_config_from_shapes(state, "t5")
    assert (
        config.num_layers,
        config.num_heads,
        config.d_kv,
        config.d_ff,
        config.relative_attention_num_buckets,
    ) == (2, 2, 8, 32, 8)
    converted = convert_t5_state_dict(state)
    assert (
        "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in converted
    )  # every layer its own
    ids = torch.tensor([[3, 7, 1, 4, 9, 2, 5]])
    with torch.no_grad():
        ours = model(input_ids=ids).last_hidden_state
        theirs = wan_t5_reference(state, ids)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    copy = UMT5EncoderModel(config).eval()
    copy.load_state_dict(converted, strict=True)  # the same weights, as transformers lays them out
    with torch.no_grad():
        torch.testing.assert_close(copy(input_ids=ids).last_hidden_state, ours, atol=1e-6, rtol=0)


def test_the_original_folder_opens_and_plays(original: Path) -> None:
    world = load_original(original)
    assert world.notes[0].startswith("original Wan2.1 folder")
    encoder = world.text_encoder.encoder
    assert isinstance(encoder, UMT5TextEncoder) and encoder.max_length == 512
    states = world.text_encoder.encode(PROMPT)
    assert states.shape == (1, 512, 16) and states[0, 10:].abs().sum() == 0  # zero after the real tokens
    block = world.session(PROMPT, seed=1).step()
    assert block.frames.shape == (9, 32, 32, 3)
    # sharded weights read the same
    sharded = original.parent / "sharded"
    shutil.copytree(original, sharded)
    (sharded / "diffusion_pytorch_model.safetensors").unlink()
    torch.manual_seed(5)
    original_transformer_files(sharded, WanTransformer3DModel(**TRANSFORMER), shards=3)
    again = load_original(sharded).session(PROMPT, seed=1).step()
    assert np.array_equal(block.frames, again.frames)


def test_prompts_are_cleaned_as_wan_cleans_them() -> None:
    assert clean_prompt("  a &amp;amp; b\n\tc  ") == "a & b c"
    assert clean_prompt("cafÃ©") == "café"  # mojibake fixed


# ---------------------------------------------------------------------------------------------
# Generator checkpoints: entries, presets, LoRA
# ---------------------------------------------------------------------------------------------


def training_checkpoint(path: Path, entries: dict[str, int]) -> dict[str, WanTransformer3DModel]:
    """A Self-Forcing-style .pt: each entry a differently seeded model in Wan's names under 'model.'."""
    models, saved = {}, {}
    for entry, seed in entries.items():
        torch.manual_seed(seed)
        models[entry] = WanTransformer3DModel(**TRANSFORMER)
        saved[entry] = {
            "model._fsdp_wrapped_module." + to_original_name(k): v
            for k, v in models[entry].state_dict().items()
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**saved, "critic": {}, "step": 7}, path)
    return models


def same_weights(world: worldsim.World, model: WanTransformer3DModel) -> bool:
    return all(
        torch.equal(a, b)
        for a, b in zip(
            world.model.transformer.state_dict().values(), model.state_dict().values(), strict=True
        )
    )


def test_each_family_loads_its_own_entry_and_settings(original: Path, tmp_path: Path) -> None:
    chunkwise = tmp_path / "chunkwise" / "causal_forcing.pt"
    models = training_checkpoint(chunkwise, {"generator": 1, "generator_ema": 2})
    world = load_original(original, checkpoint=chunkwise)
    assert same_weights(world, models["generator"])  # Causal-Forcing's own inference loads 'generator'
    assert world.config.block_frames == 3 and world.config.window_frames == 6
    assert any("preset causal-forcing (detected from causal_forcing.pt)" in n for n in world.notes)
    assert any("entry 'generator' (causal-forcing's own inference loads it)" in n for n in world.notes)
    chosen = load_original(original, checkpoint=chunkwise, checkpoint_entry="generator_ema")
    assert same_weights(chosen, models["generator_ema"]) and any("(asked for)" in n for n in chosen.notes)

    framewise = tmp_path / "framewise" / "causal_forcing.pt"
    training_checkpoint(framewise, {"generator": 1, "generator_ema": 2})
    assert load_original(original, checkpoint=framewise).config.block_frames == 1
    causvid = load_original(original, checkpoint=chunkwise, preset="causvid").config
    assert causvid.denoising_steps == (1000, 757, 522) and not causvid.warp_denoising_steps
    assert causvid.schedule.sigmas == (1.0, 0.757, 0.522)
    longlive = load_original(original, checkpoint=chunkwise, preset="longlive").config
    assert (longlive.window_frames, longlive.sink_frames) == (12, 3)
    with pytest.raises(BundleError, match="unknown preset 'selfforcing'"):
        load_original(original, preset="selfforcing")
    flat = tmp_path / "ema_model.pt"
    torch.manual_seed(3)
    plain = WanTransformer3DModel(**TRANSFORMER)
    torch.save({to_original_name(k): v for k, v in plain.state_dict().items()}, flat)
    world = load_original(original, checkpoint=flat)  # infinite-forcing's name, a flat file
    assert same_weights(world, plain) and any("a flat state dict" in n for n in world.notes)


def lora_file(
    path: Path, model: WanTransformer3DModel, rank: int, alpha: float | None = None, wrong: bool = False
) -> dict:
    """A LongLive-style adapter: PEFT names under generator_lora, for every attention and FFN linear."""
    generator = torch.Generator().manual_seed(rank)
    adapter = {}
    for name, parameter in model.named_parameters():
        original = to_original_name(name)
        if not original.endswith(".weight") or not any(
            s in original for s in (".self_attn.", ".cross_attn.", ".ffn.")
        ):
            continue
        if parameter.ndim != 2:
            continue
        layer = original.removesuffix(".weight")
        out, inp = parameter.shape
        adapter[f"base_model.model.{layer}.lora_A.weight"] = torch.randn(
            rank, inp + (1 if wrong else 0), generator=generator
        )
        adapter[f"base_model.model.{layer}.lora_B.weight"] = torch.randn(out, rank, generator=generator)
        if alpha is not None:
            adapter[f"base_model.model.{layer}.alpha"] = torch.tensor(alpha)
    torch.save({"generator_lora": adapter, "critic_lora": {}, "step": 3}, path)
    return adapter


def test_a_lora_is_merged_with_the_rank_and_alpha_of_the_file(original: Path, tmp_path: Path) -> None:
    base = load_original(original).model.transformer
    before = {k: v.clone() for k, v in base.state_dict().items()}
    for alpha, scale in ((None, 1.0), (2.0, 0.5)):
        path = tmp_path / f"lora-{alpha}.pt"
        adapter = lora_file(path, base, rank=4, alpha=alpha)
        world = load_original(original, lora=path)
        merged = world.model.transformer.state_dict()
        q = "blocks.1.attn1.to_q.weight"
        down, up = (
            adapter["base_model.model.blocks.1.self_attn.q.lora_A.weight"],
            adapter["base_model.model.blocks.1.self_attn.q.lora_B.weight"],
        )
        torch.testing.assert_close(merged[q], before[q] + scale * up @ down)
        changed = [k for k in merged if not torch.equal(merged[k], before[k])]
        assert len(changed) == 2 * 2 * 4 + 2 * 2  # 2 blocks x (2 attentions x 4 + 2 FFN)
        assert any("rank 4" in n and ("alpha 2" in n if alpha else "alpha = rank" in n) for n in world.notes)
    lora_file(tmp_path / "wrong.pt", base, rank=4, wrong=True)
    with pytest.raises(CheckpointError, match=r"wrong\.pt: the LoRA's update of 'blocks\.0\.\w+\.\w+' is"):
        load_original(original, lora=tmp_path / "wrong.pt")


# ---------------------------------------------------------------------------------------------
# inspect, and bad input
# ---------------------------------------------------------------------------------------------


def test_inspect_says_what_each_file_is(original: Path, tmp_path: Path) -> None:
    report = inspect_path(original)
    assert report.usable and "original Wan2.1-T2V folder" in report.verdict
    assert any("original Wan names" in line and "dim 24, 2 layers" in line for line in report.lines)
    chunkwise = tmp_path / "chunkwise" / "causal_forcing.pt"
    training_checkpoint(chunkwise, {"generator": 1, "generator_ema": 2})
    report = inspect_path(chunkwise)
    assert "entries generator_ema, generator (and critic, step)" in report.lines[0]
    assert any("FSDP-wrapped" in line for line in report.lines) and "preset causal-forcing" in report.verdict
    lora_file(tmp_path / "lora.pt", WanTransformer3DModel(**TRANSFORMER), rank=4)
    assert "LoRA adapter" in inspect_path(tmp_path / "lora.pt").verdict
    assert "Wan2.1 VAE" in inspect_path(original / "Wan2.1_VAE.pth").verdict
    assert "UMT5" in inspect_path(original / "models_t5_umt5-xxl-enc-bf16.pth").verdict
    half = tmp_path / "half"
    half.mkdir()
    (half / "model_index.json").write_text("{}")
    shutil.copy(original / "Wan2.1_VAE.pth", half)
    assert not inspect_path(half).usable and "mixes model formats" in inspect_path(half).verdict


def test_bad_files_are_refused_naming_the_file_and_the_problem(original: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(original, broken)
    data = (broken / "Wan2.1_VAE.pth").read_bytes()
    (broken / "Wan2.1_VAE.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"Wan2\.1_VAE\.pth"):
        load_original(broken)
    (broken / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(BundleError, match=r"original Wan2\.1 folder but lacks Wan2\.1_VAE\.pth"):
        load_original(broken)

    torch.save({"generator": Sneaky()}, tmp_path / "objects.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_original(original, checkpoint=tmp_path / "objects.pt")

    torch.manual_seed(0)
    big = WanTransformer3DModel(**{**TRANSFORMER, "num_attention_heads": 4})  # another model size
    torch.save(
        {"generator": {to_original_name(k): v for k, v in big.state_dict().items()}}, tmp_path / "big.pt"
    )
    with pytest.raises(
        CheckpointError, match=r"big\.pt: a model of dim 48, 2 layers, but .* dim 24, 2 layers"
    ):
        load_original(original, checkpoint=tmp_path / "big.pt")

    state = {to_original_name(k): v for k, v in WanTransformer3DModel(**TRANSFORMER).state_dict().items()}
    state["img_emb.proj.0.weight"] = torch.zeros(2)
    torch.save({"generator": state}, tmp_path / "i2v.pt")
    with pytest.raises(CheckpointError, match="image-to-video"):
        load_original(original, checkpoint=tmp_path / "i2v.pt")

    i2v = tmp_path / "i2v-folder"
    shutil.copytree(original, i2v)
    config = json.loads((i2v / "config.json").read_text())
    (i2v / "config.json").write_text(json.dumps({**config, "model_type": "i2v"}))
    with pytest.raises(CheckpointError, match="'i2v' model"):
        load_original(i2v)


def test_the_transformer_files_convert_to_the_diffusers_copy(tmp_path: Path) -> None:
    from models.original_wan import load_original_transformer

    torch.manual_seed(9)
    source = WanTransformer3DModel(**TRANSFORMER).eval()
    original_transformer_files(tmp_path, source, shards=2)
    loaded = load_original_transformer(tmp_path)
    assert dict(loaded.config) | {"_use_default_values": None} == dict(source.config) | {
        "_use_default_values": None
    }
    latents, text = torch.randn(1, 16, 2, 8, 8), torch.randn(1, 5, 16)
    with torch.no_grad():
        ours = loaded(latents, torch.tensor([500.0]), text).sample
        theirs = source(latents, torch.tensor([500.0]), text).sample
    assert torch.equal(ours, theirs)
