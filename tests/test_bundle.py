"""Bundles and pipeline folders: saving, loading, the UMT5 text encoder, engine settings and load errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

import worldsim
from models.checkpoint import CheckpointError
from models.text import HashTextEncoder, UMT5TextEncoder
from tests.conftest import (
    HEIGHT,
    LATENTS_MEAN,
    LATENTS_STD,
    TINY_TRANSFORMER,
    TINY_VAE,
    WIDTH,
    tiny_transformer,
    tiny_vae,
    tiny_world,
)
from tests.test_checkpoint import to_original_name as original_name
from worldsim.bundle import BUNDLE_FILE, BundleError, Parts, assemble_world, save_bundle
from worldsim.config import PRESETS, EngineConfig

SEED = 7  # weights of the saved bundle; not the default seed, so a fresh random model cannot match it
CHECKPOINT_SEED = 11  # weights of the generator checkpoint loaded over the bundle's
ENGINE = EngineConfig(flush_keep_frames=1, cut_delta=6)
HASH_TEXT = {"kind": "hash", "dim": TINY_TRANSFORMER["text_dim"], "length": 5}
PROMPT = "a sunny meadow"

SENTENCES = [
    "a sunny meadow with flowers",
    "a rainy street at night with neon lights",
    "a snowy mountain under a clear sky",
    "waves on a quiet beach",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def write_generator_checkpoint(path: Path, transformer: torch.nn.Module) -> Path:
    """A Self-Forcing style generator checkpoint: original names under ``model.``, in a pickled dict."""
    state = {"model." + original_name(name): t.clone() for name, t in transformer.state_dict().items()}
    assert "model.blocks.0.self_attn.q.weight" in state and "model.head.modulation" in state
    torch.save({"generator_ema": state}, path)
    return path


def assert_weights_equal(model: torch.nn.Module, expected: torch.nn.Module) -> None:
    got, want = model.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def edit_spec(folder: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    path = folder / BUNDLE_FILE
    spec = json.loads(path.read_text())
    change(spec)
    path.write_text(json.dumps(spec))


def build_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with <pad> = 0 and a </s> appended to every text, saved to `folder`."""
    tokenizer = Tokenizer(WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    tokenizer.train_from_iterator(SENTENCES, trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    assert fast.pad_token_id == 0
    fast.save_pretrained(folder)
    return fast


def build_umt5(folder: Path, vocab_size: int) -> UMT5EncoderModel:
    """A one-layer UMT5 encoder as wide as the tiny transformer's text input, saved to `folder`."""
    torch.manual_seed(3)
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TINY_TRANSFORMER["text_dim"],
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = UMT5EncoderModel(config).eval()
    model.save_pretrained(folder)
    return model


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the tiny models (seed SEED), hash text encoder, non-default engine settings."""
    folder = tmp_path_factory.mktemp("bundle") / "tiny"
    return save_bundle(
        folder, tiny_transformer(SEED), tiny_vae(SEED), HASH_TEXT, ENGINE, HEIGHT, WIDTH,
        name="tiny-bundle", latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD,
    )  # fmt: skip


@pytest.fixture
def copy(bundle: Path, tmp_path: Path) -> Path:
    """A copy of the bundle that a test may damage."""
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


@pytest.fixture(scope="module")
def umt5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Folders (text_encoder, tokenizer) of a tiny UMT5 encoder and its tokenizer."""
    root = tmp_path_factory.mktemp("umt5")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        tokenizer = build_tokenizer(root / "tokenizer")
        build_umt5(root / "text_encoder", len(tokenizer))
    return root / "text_encoder", root / "tokenizer"


def add_umt5(folder: Path, umt5: tuple[Path, Path]) -> None:
    shutil.copytree(umt5[0], folder / "text_encoder")
    shutil.copytree(umt5[1], folder / "tokenizer")


# ---------------------------------------------------------------------------------------------
# Bundle round trip
# ---------------------------------------------------------------------------------------------


def test_saved_bundle_layout(bundle: Path) -> None:
    spec = json.loads((bundle / BUNDLE_FILE).read_text())
    assert spec["format"] == "worldsim-bundle" and spec["version"] == 1
    assert spec["text_encoder"] == HASH_TEXT
    assert spec["latents_mean"] == LATENTS_MEAN and spec["latents_std"] == LATENTS_STD
    assert (bundle / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (bundle / "vae" / "config.json").is_file()


def test_bundle_round_trip_matches_in_memory_world(bundle: Path) -> None:
    world = worldsim.load(bundle)
    assert world.name == "tiny-bundle"
    assert world.source == str(bundle)
    assert (world.height, world.width) == (HEIGHT, WIDTH)
    assert world.config == ENGINE
    assert world.config.flush_keep_frames == 1 and world.config.cut_delta == 6
    assert isinstance(world.text_encoder.encoder, HashTextEncoder)
    assert world.text_encoder.encoder.length == 5

    reference = tiny_world(ENGINE, seed=SEED)
    assert_weights_equal(world.model.transformer, reference.model.transformer)
    block = world.session(PROMPT, seed=5).step()
    expected = reference.session(PROMPT, seed=5).step()
    assert block.frames.shape == expected.frames.shape == (9, HEIGHT, WIDTH, 3)
    assert np.array_equal(block.frames, expected.frames)
    assert torch.equal(block.latents, expected.latents)
    # The seed matters, so equal frames are not a coincidence of a degenerate model.
    other = reference.session(PROMPT, seed=6).step()
    assert not np.array_equal(other.frames, expected.frames)


def test_bundle_latent_statistics_come_from_the_bundle(copy: Path) -> None:
    reference = worldsim.load(copy).session(PROMPT, seed=5).step()
    edit_spec(copy, lambda spec: spec.update(latents_mean=[0.0] * 4, latents_std=[1.0] * 4))
    changed = worldsim.load(copy).session(PROMPT, seed=5).step()
    assert torch.equal(changed.latents, reference.latents)
    assert not np.array_equal(changed.frames, reference.frames)


def test_checkpoint_argument_loads_over_the_bundle_weights(bundle: Path, tmp_path: Path) -> None:
    source = tiny_transformer(CHECKPOINT_SEED)
    path = write_generator_checkpoint(tmp_path / "generator.pt", source)
    world = worldsim.load(bundle, checkpoint=path)
    assert_weights_equal(world.model.transformer, source)
    plain = worldsim.load(bundle)
    assert not torch.equal(
        plain.model.transformer.blocks[0].attn1.to_q.weight,
        world.model.transformer.blocks[0].attn1.to_q.weight,
    )
    assert world.config == ENGINE  # the engine settings still come from the bundle


def test_generator_checkpoint_named_in_the_bundle(copy: Path) -> None:
    source = tiny_transformer(CHECKPOINT_SEED)
    write_generator_checkpoint(copy / "generator.pt", source)
    edit_spec(copy, lambda spec: spec.update(generator_checkpoint="generator.pt"))
    assert_weights_equal(worldsim.load(copy).model.transformer, source)
    # An explicit checkpoint takes the place of the bundle's.
    override = tiny_transformer(CHECKPOINT_SEED + 1)
    path = write_generator_checkpoint(copy / "override.pt", override)
    assert_weights_equal(worldsim.load(copy, checkpoint=path).model.transformer, override)


# ---------------------------------------------------------------------------------------------
# UMT5 text encoder and diffusers pipeline folders
# ---------------------------------------------------------------------------------------------


def test_umt5_states_shape_and_zero_padding(umt5: tuple[Path, Path]) -> None:
    encoder = UMT5TextEncoder.from_folder(*umt5, max_length=8)
    assert encoder.dim == TINY_TRANSFORMER["text_dim"]
    states = encoder.encode(PROMPT)
    assert states.shape == (1, 8, TINY_TRANSFORMER["text_dim"])
    assert states.dtype == torch.float32

    ids = encoder.tokenizer(PROMPT).input_ids
    assert ids[-1] == encoder.tokenizer.eos_token_id
    real = len(ids)  # three words and </s>
    assert real == 4
    assert torch.all(states[0, real:] == 0)
    assert torch.all(states[0, :real].abs().sum(-1) > 0)

    # The real positions are the encoder's output under the attention mask; the padded positions
    # would not be zero without the masking.
    padded = torch.tensor([ids + [0] * (8 - real)])
    mask = (padded != 0).long()
    with torch.no_grad():
        raw = encoder.model(input_ids=padded, attention_mask=mask).last_hidden_state
    assert torch.allclose(states[0, :real], raw[0, :real], atol=1e-6)
    assert torch.all(raw[0, real:].abs().sum(-1) > 0)


def test_umt5_is_deterministic_and_prompt_dependent(umt5: tuple[Path, Path]) -> None:
    encoder = UMT5TextEncoder.from_folder(*umt5, max_length=8)
    first = encoder.encode(PROMPT)
    assert torch.equal(encoder.encode(PROMPT), first)
    assert torch.equal(UMT5TextEncoder.from_folder(*umt5, max_length=8).encode(PROMPT), first)
    assert not torch.equal(encoder.encode("a snowy mountain"), first)


def test_umt5_respects_max_length(umt5: tuple[Path, Path]) -> None:
    long_prompt = " ".join(SENTENCES)
    encoder = UMT5TextEncoder.from_folder(*umt5, max_length=4)
    states = encoder.encode(long_prompt)
    assert states.shape == (1, 4, TINY_TRANSFORMER["text_dim"])
    assert torch.all(states[0].abs().sum(-1) > 0)  # every position is a real token
    assert UMT5TextEncoder.from_folder(*umt5, max_length=12).encode(long_prompt).shape == (1, 12, 16)
    assert UMT5TextEncoder.from_folder(*umt5, max_length=6).encode("waves").shape == (1, 6, 16)


def write_pipeline(folder: Path, umt5: tuple[Path, Path] | None) -> Path:
    """A diffusers Wan pipeline folder of the tiny models (seed SEED), with the UMT5 encoder if given."""
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    tiny_transformer(SEED).save_pretrained(folder / "transformer", safe_serialization=True)
    torch.manual_seed(SEED)
    vae = AutoencoderKLWan(**TINY_VAE, latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    if umt5 is not None:
        add_umt5(folder, umt5)
    return folder


def test_diffusers_pipeline_folder_opens(umt5: tuple[Path, Path], tmp_path: Path) -> None:
    folder = write_pipeline(tmp_path / "pipeline", umt5)
    world = worldsim.load(folder)
    assert world.name == "pipeline"
    assert isinstance(world.text_encoder.encoder, UMT5TextEncoder)
    assert world.text_encoder.dim == 16
    assert (world.height, world.width) == (480, 832)
    assert world.config == PRESETS["wan-1.3b"].engine
    assert_weights_equal(world.model.transformer, tiny_transformer(SEED))

    source = tiny_transformer(CHECKPOINT_SEED)
    path = write_generator_checkpoint(tmp_path / "generator.pt", source)
    assert_weights_equal(worldsim.load(folder, checkpoint=path).model.transformer, source)


def test_pipeline_folder_without_text_encoder(tmp_path: Path) -> None:
    folder = write_pipeline(tmp_path / "pipeline", None)
    with pytest.raises(BundleError, match="cannot load the UMT5 text encoder") as info:
        worldsim.load(folder)
    assert str(folder / "text_encoder") in str(info.value)


def test_bundle_with_umt5_text_encoder_steps(umt5: tuple[Path, Path], tmp_path: Path) -> None:
    text = {"kind": "umt5", "path": "text_encoder", "tokenizer": "tokenizer", "max_length": 8}
    folder = save_bundle(
        tmp_path / "umt5-bundle", tiny_transformer(SEED), tiny_vae(SEED), text, EngineConfig(), HEIGHT, WIDTH,
        name="umt5-bundle", latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD,
    )  # fmt: skip
    add_umt5(folder, umt5)
    world = worldsim.load(folder)
    encoder = world.text_encoder.encoder
    assert isinstance(encoder, UMT5TextEncoder)
    assert encoder.max_length == 8
    assert world.text_encoder.encode(PROMPT).shape == (1, 8, 16)

    block = world.session(PROMPT, seed=2).step()
    assert block.frames.shape == (9, HEIGHT, WIDTH, 3) and block.frames.dtype == np.uint8

    reference = assemble_world(
        Parts(
            "reference", tiny_transformer(SEED), tiny_vae(SEED),
            UMT5TextEncoder.from_folder(*umt5, max_length=8),
            EngineConfig(), HEIGHT, WIDTH, LATENTS_MEAN, LATENTS_STD,
        )
    )  # fmt: skip
    assert np.array_equal(block.frames, reference.session(PROMPT, seed=2).step().frames)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bundle"
    with pytest.raises(BundleError) as info:
        worldsim.load(missing)
    assert str(missing) in str(info.value)
    assert "not a built-in bundle" in str(info.value)
    with pytest.raises(BundleError, match=r"no bundle named 'nonexistent-world'.*not a built-in bundle"):
        worldsim.load("nonexistent-world")


def test_folder_without_bundle_or_pipeline_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as info:
        worldsim.load(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and BUNDLE_FILE in message and "model_index.json" in message


def test_invalid_json(copy: Path) -> None:
    (copy / BUNDLE_FILE).write_text('{"format": "worldsim-bundle", ')
    with pytest.raises(BundleError, match="is not valid JSON"):
        worldsim.load(copy)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda spec: spec.update(format="something-else"), r"not a worldsim bundle file.*worldsim-bundle"),
        (lambda spec: spec.update(version=2), r"unsupported bundle version 2"),
        (lambda spec: spec.pop("version"), r"unsupported bundle version None"),
        (lambda spec: [spec.pop("vae"), spec.pop("width")], r"lacks vae, width"),
        (lambda spec: spec.pop("text_encoder"), r"lacks text_encoder"),
        (lambda spec: spec["engine"].update(warp_speed=9), r"unknown engine settings: warp_speed"),
        (
            lambda spec: spec["engine"].update(window_frames=3),
            r"invalid engine settings: window_frames \(3\) must hold the sink \(1\) and a block \(3\)",
        ),
        (lambda spec: spec["engine"].update(positions="spiral"), r"positions must be one of"),
        (lambda spec: spec.update(engine=[3, 6]), r"'engine' must be an object"),
        (lambda spec: spec.update(text_encoder={"kind": "clip"}), r"unknown text encoder kind 'clip'"),
        (lambda spec: spec.update(text_encoder="hash"), r"'text_encoder' must be an object"),
        (lambda spec: spec.update(text_encoder={"kind": "hash"}), r"hash text encoder needs 'dim'"),
        (
            lambda spec: spec.update(text_encoder={"kind": "hash", "dim": 24}),
            r"text encoder gives 24-wide states but the transformer expects 16",
        ),
        (lambda spec: spec.update(height=36), r"video size 36x32 is not a multiple of 8"),
    ],
    ids=[
        "format", "version", "no-version", "missing-keys", "missing-text-encoder", "unknown-engine-setting",
        "window-too-small", "bad-positions", "engine-not-object", "unknown-text-encoder",
        "text-encoder-not-object", "hash-without-dim", "text-dim-mismatch", "odd-video-size",
    ],
)  # fmt: skip
def test_bad_bundle_file(copy: Path, change: Callable[[dict[str, Any]], Any], pattern: str) -> None:
    edit_spec(copy, change)
    with pytest.raises(BundleError, match=pattern):
        worldsim.load(copy)


def test_missing_vae_folder(copy: Path) -> None:
    shutil.rmtree(copy / "vae")
    with pytest.raises(BundleError, match=r"no VAE at .*vae"):
        worldsim.load(copy)


def test_missing_text_encoder_folder(copy: Path) -> None:
    edit_spec(copy, lambda spec: spec.update(text_encoder={"kind": "umt5", "path": "umt5-xxl"}))
    with pytest.raises(BundleError) as info:
        worldsim.load(copy)
    assert str(copy / "umt5-xxl") in str(info.value)


def test_unreadable_text_encoder(copy: Path, umt5: tuple[Path, Path]) -> None:
    add_umt5(copy, umt5)
    text = {"kind": "umt5", "path": "text_encoder", "tokenizer": "tokenizer"}
    edit_spec(copy, lambda spec: spec.update(text_encoder=text))
    (copy / "text_encoder" / "model.safetensors").write_bytes(b"\x00garbage" * 16)
    with pytest.raises(BundleError) as info:
        worldsim.load(copy)
    assert str(copy / "text_encoder") in str(info.value)


def test_vae_with_other_latent_channels(copy: Path) -> None:
    shutil.rmtree(copy / "vae")
    torch.manual_seed(0)
    AutoencoderKLWan(**{**TINY_VAE, "z_dim": 8}).save_pretrained(copy / "vae", safe_serialization=True)
    edit_spec(copy, lambda spec: [spec.pop("latents_mean"), spec.pop("latents_std")])
    with pytest.raises(BundleError, match=r"VAE has 8 latent channels but the transformer takes 4"):
        worldsim.load(copy)


def test_corrupt_transformer_weights(copy: Path) -> None:
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\xff not a safetensors file " * 8)
    with pytest.raises(CheckpointError) as info:
        worldsim.load(copy)
    assert str(weights) in str(info.value)


def test_missing_checkpoint_file(bundle: Path, tmp_path: Path) -> None:
    missing = tmp_path / "generator.pt"
    with pytest.raises(CheckpointError) as info:
        worldsim.load(bundle, checkpoint=missing)
    assert "no such checkpoint file" in str(info.value) and str(missing) in str(info.value)


# ---------------------------------------------------------------------------------------------
# EngineConfig
# ---------------------------------------------------------------------------------------------


def test_engine_config_dict_round_trip() -> None:
    config = EngineConfig(
        block_frames=2, window_frames=9, sink_frames=2, flush_keep_frames=3, cut_delta=7,
        cut_keeps_sink=False, denoising_steps=(900, 400), shift=3.0, context_noise=10,
        positions="onset", onset_frame=12, fps=24.0, training_horizon_frames=30,
    )  # fmt: skip
    values = config.to_dict()
    assert "kept_frames" not in values
    assert values["denoising_steps"] == [900, 400]
    again = EngineConfig.from_dict(json.loads(json.dumps(values)))
    assert again == config
    assert again.denoising_steps == (900, 400) and again.kept_frames == 7
    assert EngineConfig.from_dict({}) == EngineConfig()
    assert EngineConfig.from_dict(EngineConfig().to_dict()) == EngineConfig()


def test_engine_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(
        ValueError, match=r"unknown engine settings: kept_frames, speed \(known: block_frames"
    ):
        EngineConfig.from_dict({"speed": 2, "kept_frames": 3})


def test_engine_config_replace() -> None:
    config = EngineConfig()
    changed = config.replace(block_frames=2, denoising_steps=[1000, 500])
    assert changed.block_frames == 2 and changed.kept_frames == config.window_frames - 2
    assert changed.denoising_steps == (1000, 500)
    assert config.block_frames == 3 and config.denoising_steps == (1000, 750, 500, 250)
    assert config.replace() == config


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"window_frames": 3}, r"window_frames \(3\) must hold the sink \(1\) and a block \(3\)"),
        ({"flush_keep_frames": 3}, r"flush_keep_frames \(3\) plus the sink must fit in the 3 frames"),
        ({"block_frames": 0}, r"block_frames must be at least 1"),
        ({"denoising_steps": [250, 500]}, r"denoising_steps must decrease"),
        ({"denoising_steps": []}, r"denoising_steps must be a non-empty list"),
        ({"positions": "spiral"}, r"positions must be one of"),
        ({"shift": 0}, r"shift and fps must be positive"),
        ({"context_noise": 1000}, r"context_noise must be in \[0, 1000\)"),
        ({"cut_speed": 1}, r"unknown engine settings: cut_speed"),
    ],
    ids=[
        "window",
        "flush-keep",
        "block",
        "steps-order",
        "no-steps",
        "positions",
        "shift",
        "context-noise",
        "unknown",
    ],
)
def test_engine_config_replace_validates(changes: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        EngineConfig().replace(**changes)


def test_session_settings_are_validated(bundle: Path) -> None:
    world = worldsim.load(bundle)
    assert world.session(PROMPT, cut_delta=9).config.cut_delta == 9
    assert world.config == ENGINE
    with pytest.raises(ValueError, match="window_frames"):
        world.session(PROMPT, window_frames=2)


def test_the_built_in_tiny_bundle_ships_loads_by_name_and_plays() -> None:
    import worldsim
    from worldsim.bundle import BUILTIN_BUNDLES

    folder = BUILTIN_BUNDLES / "tiny"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 40 * 2**20
    card = (folder / "MODEL_CARD.md").read_text()
    assert "| ground truth |" in card and "run `worldsim eval --write-card`" not in card
    world = worldsim.load("tiny")
    assert world.scenario is not None and world.config.training_horizon_frames <= 21
    block = world.session("a sandy desert, at night, walking north").step()
    assert block.frames.shape == (world.block_video_frames()[0], 64, 64, 3)


def test_the_built_in_worlds_first_frame_shows_the_prompt() -> None:
    """The model's first block, made with nothing to attend to, came out blue-purple (it read as tundra
    at night); the bundle's lead-in blocks keep it as context and show what follows."""
    from envs.procedural.probes import classify

    world = worldsim.load("tiny")
    assert world.config.lead_in_blocks > 0
    for seed in range(3):
        frames = world.session("a green meadow, bright daylight, walking east", seed=seed).step().frames
        assert classify(frames[:1]) == ("meadow", "day"), seed


def test_missing_or_broken_text_whitening(copy: Path) -> None:
    text = {"kind": "minilm", "whitening": "white.safetensors"}
    edit_spec(copy, lambda spec: spec.update(text_encoder=text))
    with pytest.raises(BundleError, match=r"the text whitening file .*white\.safetensors is missing"):
        worldsim.load(copy)
    (copy / "white.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(BundleError, match=r"cannot use the text whitening: .*white\.safetensors is not"):
        worldsim.load(copy)
