"""One infinity-RoPE code path: the training rollout runs exactly what Session.step runs.

Training scores a noised block against the cache and then commits the clean block; a session
denoises from noise and commits its result. With one denoising step from sigma 1 the two meet: the
training block noised to sigma 1 is the session's noise, and the training's one-step estimate is the
session's block. So feeding the session's own latents and noise to the training rollout must give
the same estimates, positions and cache contents bit for bit, through eviction, a flush that trims
and a RoPE Cut.
"""

from __future__ import annotations

import pytest
import torch

from envs.tiny.losses import Clips, prompt_changes, training_rollout
from tests.conftest import tiny_world
from worldsim.cache import KVCache
from worldsim.config import EngineConfig
from worldsim.rollout import open_block

PROMPTS = ["a meadow", "a meadow", "a meadow", "a desert", "a desert", "a tundra", "a tundra", "a tundra"]
CUTS = [False, False, False, False, False, True, False, False]  # block 3: a prompt switch; block 5: a cut


@pytest.mark.parametrize(
    "engine",
    [
        # window 6, block 3: a flush keeps the sink and 1 of 3 frames
        EngineConfig(denoising_steps=(1000,), flush_keep_frames=1),
        # blocks of 1 in a window of 4, a cut that starts a fresh window
        EngineConfig(
            denoising_steps=(1000,),
            block_frames=1,
            window_frames=4,
            flush_keep_frames=0,
            cut_keeps_sink=False,
        ),
    ],
    ids=["window-6-block-3", "window-4-block-1-sinkless-cut"],
)
def test_training_rollout_equals_session_steps_bit_for_bit(engine: EngineConfig) -> None:
    world = tiny_world(engine)
    model = world.model
    session = world.session(PROMPTS[0], seed=4)
    generator = torch.Generator().manual_seed(9)
    noises, blocks, caches, held = [], [], [], []
    for index, (prompt, cut) in enumerate(zip(PROMPTS, CUTS, strict=True)):
        session.follow(prompt, cut)
        noise = torch.randn(world.latent_shape(engine.block_frames), generator=generator)
        block = session.step(noise)
        assert block.cut == cut and block.flushed == (cut or (index > 0 and prompt != PROMPTS[index - 1]))
        noises.append(noise)
        blocks.append(block)
        caches.append([(k.clone(), v.clone()) for k, v in session.cache.layers() or []])
        held.append(list(session.cache.held[0]))
    assert any(b.flushed and len(b.positions) < engine.window_frames for b in blocks[1:])  # a flush trimmed

    latents = torch.cat([b.latents for b in blocks], dim=1)[None]  # (1, C, F, h, w)
    text_states = torch.stack([world.text_encoder.encode(p)[0] for p in PROMPTS])[None]  # (1, blocks, L, dim)
    noise_of = iter(noises)

    def from_sigma_one(clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones(1), next(noise_of)

    with torch.no_grad():
        clips = Clips(latents, text_states, prompt_changes([PROMPTS]), [CUTS])
        rolled = training_rollout(model, clips, engine, from_sigma_one)
        for block, trained, cache, frames in zip(blocks, rolled, caches, held, strict=True):
            assert torch.equal(trained.estimate[0], block.latents)
            assert tuple(trained.window.positions[0]) == block.positions
            assert (trained.window.flushed[0], trained.window.cut[0]) == (block.flushed, block.cut)
            assert trained.cache.held[0] == frames
            layers = trained.cache.layers() or []
            assert len(layers) == len(cache)
            for (k, v), (k_ref, v_ref) in zip(layers, cache, strict=True):
                assert torch.equal(k, k_ref) and torch.equal(v, v_ref)


def test_a_batch_with_caches_of_different_lengths_equals_each_clip_alone() -> None:
    """Two clips in one batch, one flushed (trimmed) where the other is not: masked keys, same results."""
    engine = EngineConfig(flush_keep_frames=1)
    world = tiny_world(engine)
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 12, 8, 8)
    text_states = torch.randn(2, 4, 5, 16)
    prompts = [
        ["a", "a", "b", "b"],
        ["a", "a", "a", "b"],
    ]  # the first clip flushes at block 2, the second at 3
    cuts = [[False, False, False, True], [False, True, False, False]]

    def run(rows: slice) -> list:
        generator = torch.Generator().manual_seed(1)

        def noise(clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            eps = torch.randn((2, *clean.shape[1:]), generator=generator)[rows]
            return torch.full((clean.shape[0],), 0.7), eps

        with torch.no_grad():
            return [
                (b.flow, b.window.key_mask is not None)
                for b in training_rollout(
                    world.model,
                    Clips(latents[rows], text_states[rows], prompt_changes(prompts[rows]), cuts[rows]),
                    engine,
                    noise,
                )
            ]  # fmt: skip

    together = run(slice(0, 2))
    # blocks 1 and 2: one row was flushed to 2 frames while the other held 3, so keys were masked
    assert [masked for _, masked in together] == [False, True, True, False]
    for row in (0, 1):
        alone = run(slice(row, row + 1))
        for (flow, _), (flow_alone, _) in zip(together, alone, strict=True):
            # masked and unmasked attention sum in different orders: equal to float32 rounding
            torch.testing.assert_close(flow[row : row + 1], flow_alone, atol=1e-5, rtol=1e-5)


def test_open_block_flushes_and_cuts_only_the_rows_that_ask() -> None:
    cache = KVCache(num_layers=1, capacity=3, sink_frames=1, batch=3)
    engine = EngineConfig(flush_keep_frames=1)
    kv = torch.arange(3 * 3 * 2, dtype=torch.float32).view(3, 3 * 2, 1, 1)  # 3 rollouts, 3 frames of 2 tokens
    cache.commit([(kv, kv)], [0, 1, 2])
    cache.commit([(kv + 100, kv + 100)], [3, 4, 5])
    assert cache.held == [[0, 4, 5]] * 3
    window = open_block(cache, engine, 6, changed=[True, False, False], cut=[False, False, True])
    assert cache.held == [[0, 5], [0, 4, 5], [0, 5]]
    assert window.flushed == (True, False, True) and window.cut == (False, False, True)
    assert window.positions == [[0, 1, 0, 2, 3, 4], [0, 1, 2, 3, 4, 5], [0, 1, 0, 44, 45, 46]]
    mask = window.key_mask
    assert mask is not None and mask.shape == (3, (3 + 3) * 2)
    assert mask[0].tolist() == [True] * 4 + [False] * 2 + [True] * 6  # the padded slot is hidden
    assert mask[1].all()
    keys = window.past[0][0][:, :, 0, 0]
    assert keys[0, :4].tolist() == [0, 1, 104, 105] and keys[1].tolist() == [6, 7, 108, 109, 110, 111]
