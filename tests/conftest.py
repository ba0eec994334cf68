"""Tiny random models shared by the tests: 2 layers, 2 heads, CPU, float32."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from models.text import HashTextEncoder
from worldsim.bundle import Parts, assemble_world, save_bundle
from worldsim.config import EngineConfig
from worldsim.world import World

TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
)
TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True])
LATENTS_MEAN = [0.1, -0.2, 0.3, 0.0]
LATENTS_STD = [1.5, 0.5, 2.0, 1.0]
HEIGHT = WIDTH = 32  # latent 8x8 -> 16 tokens a frame

torch.set_num_threads(1)  # tiny models run fastest on one thread, and CI machines have two cores


def tiny_transformer(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY_TRANSFORMER).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(**TINY_VAE).eval()


def tiny_parts(engine: EngineConfig | None = None, seed: int = 0) -> Parts:
    return Parts(
        name="test-tiny",
        transformer=tiny_transformer(seed),
        vae=tiny_vae(seed),
        text=HashTextEncoder(TINY_TRANSFORMER["text_dim"], length=5),
        engine=engine or EngineConfig(),
        height=HEIGHT,
        width=WIDTH,
        latents_mean=LATENTS_MEAN,
        latents_std=LATENTS_STD,
    )


def tiny_world(engine: EngineConfig | None = None, seed: int = 0) -> World:
    return assemble_world(tiny_parts(engine, seed))


@pytest.fixture(scope="session")
def world() -> World:
    return tiny_world()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bundle folder of the tiny random models that ships the built-in world's scenario."""
    folder = tmp_path_factory.mktemp("tiny-bundle")
    save_bundle(
        folder,
        tiny_transformer(),
        tiny_vae(),
        {"kind": "hash", "dim": TINY_TRANSFORMER["text_dim"], "length": 5},
        EngineConfig(),
        HEIGHT,
        WIDTH,
        name="test-tiny",
        latents_mean=LATENTS_MEAN,
        latents_std=LATENTS_STD,
        scenario="scenario.toml",
    )
    scenario = Path(__file__).resolve().parent.parent / "envs" / "procedural" / "scenario.toml"
    shutil.copyfile(scenario, folder / "scenario.toml")
    return str(folder)
