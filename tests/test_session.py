"""The infinity-RoPE rollout: relative positions, constant memory, KV Flush and RoPE Cut."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import tiny_world
from worldsim.cache import KVCache
from worldsim.config import EngineConfig
from worldsim.positions import block_positions
from worldsim.rollout import recache
from worldsim.session import NonFiniteError

W, N = 6, 3  # reference window and block


def test_block_positions_stay_in_window_however_far() -> None:
    config = EngineConfig()
    for block in (10, 10_000):
        start = block * N
        held = [0, start - 2, start - 1]  # the sink and the two most recent frames
        positions = block_positions(config, held, start)
        assert positions[-N:] == list(range(W - N, W))
        assert max(positions) == W - 1


def test_absolute_positions_grow_past_the_horizon() -> None:
    config = EngineConfig(positions="absolute")
    positions = block_positions(config, [0, 29_998, 29_999], 30_000)
    assert positions == [0, 29_998, 29_999, 30_000, 30_001, 30_002]


def test_onset_positions_anchor_the_block() -> None:
    config = EngineConfig(positions="onset", onset_frame=21)
    assert block_positions(config, [0, 7, 8], 9) == [18, 19, 20, 21, 22, 23]
    assert block_positions(config, [], 0) == [21, 22, 23]


def test_session_positions_after_window_fills(world) -> None:
    session = world.session("a meadow", seed=0)
    for index in range(11):
        block = session.step()
        assert max(block.positions) <= W - 1
        if index >= 1:
            assert block.positions[-N:] == tuple(range(W - N, W))
    assert block.index == 10


def test_cache_and_decoder_keep_their_size_over_200_blocks() -> None:
    world = tiny_world(EngineConfig(window_frames=6, block_frames=3, denoising_steps=(1000,)))
    session = world.session("a meadow", seed=0)
    session.step()
    cache_bytes = session.cache.nbytes  # full: W - N frames

    def decoder_bytes() -> int:
        return sum(
            t.numel() * t.element_size() for t in session.decoder_state.feature_cache if torch.is_tensor(t)
        )

    session.step()
    state_bytes = decoder_bytes()
    for index in range(2, 200):
        if index % 37 == 0:
            session.set_prompt(f"prompt {index}")
        if index % 53 == 0:
            session.cut(f"place {index}")
        block = session.step()
        assert session.cache.frames() <= W - N
        assert session.cache.nbytes <= cache_bytes
        assert decoder_bytes() == state_bytes
        assert max(block.positions) <= W - 1 or block.cut
    assert session.cache.nbytes == cache_bytes
    assert session.block_index == 200
    assert session.frames_generated == 1 + (200 * N - 1) * 4


def test_flush_keeps_the_sink_and_the_last_k_frames() -> None:
    cache = KVCache(num_layers=1, capacity=W - N, sink_frames=1)
    kv = torch.arange(3 * 2, dtype=torch.float32).view(1, 3 * 2, 1, 1)  # 3 frames of 2 tokens
    for block in range(4):
        cache.commit([(kv + 100 * block, kv + 100 * block)], [3 * block, 3 * block + 1, 3 * block + 2])
    assert cache.held[0] == [0, 10, 11]
    cache.flush(keep_frames=1)
    assert cache.held[0] == [0, 11]
    keys = cache.layers()[0][0].flatten()
    assert keys.tolist() == [0, 1, 304, 305]  # sink frame 0 and frame 11's tokens


@pytest.mark.parametrize("keep", [1, 2])
def test_prompt_change_flushes_and_shows_in_the_very_next_block(keep: int) -> None:
    world = tiny_world(EngineConfig(flush_keep_frames=keep))
    changed = world.session("a meadow", seed=7)
    same = world.session("a meadow", seed=7)
    untouched = world.session("a meadow", seed=7)
    for _ in range(3):
        a, b, c = changed.step(), same.step(), untouched.step()
        assert np.array_equal(a.frames, c.frames)
    changed.set_prompt("a snowfield")
    same.set_prompt("a meadow")
    a, b, c = changed.step(), same.step(), untouched.step()

    assert a.flushed and not b.flushed
    assert len(a.positions) == 1 + keep + N  # the sink, k kept frames, the block
    assert a.positions == tuple(range(1 + keep + N))
    assert not np.array_equal(a.frames, c.frames)  # the new prompt shows at once
    assert np.array_equal(b.frames, c.frames)  # re-setting the same prompt changes nothing


RECACHE = EngineConfig(
    block_frames=1, window_frames=4, flush_on_prompt_change=False, recache_on_prompt_change=True
)


def test_recache_under_the_same_prompt_gives_back_the_same_cache() -> None:
    """The cache keeps each held frame's latents: encoded again under the prompt that made them, at
    their positions, they give the keys/values the cache holds (blocks of one frame and nothing
    evicted yet, so that the frame-by-frame re-encoding sees what the first encoding saw)."""
    world = tiny_world(RECACHE)
    session = world.session("a meadow", seed=3)
    for _ in range(3):
        session.step()
    before = [(k.clone(), v.clone()) for k, v in session.cache.layers()]
    held = list(session.cache.held[0])
    assert session.cache.held_contexts(0).shape[1] == len(held) == 3
    recache(world.model, session.cache, RECACHE, [0], world.text_context("a meadow"))
    assert session.cache.held[0] == held
    for (k0, v0), (k1, v1) in zip(before, session.cache.layers(), strict=True):
        torch.testing.assert_close(k1, k0, rtol=0, atol=1e-5)
        torch.testing.assert_close(v1, v0, rtol=0, atol=1e-5)
    recache(world.model, session.cache, RECACHE, [0], world.text_context("a snowfield"))
    # another prompt: new keys from the second layer on (the first layer's come before any text)
    assert not torch.allclose(session.cache.layers()[-1][0], before[-1][0])


def test_a_prompt_change_with_recache_keeps_every_frame_and_renews_them() -> None:
    world = tiny_world(RECACHE)
    recached, kept = (
        world.session("a meadow", seed=7),
        world.session("a meadow", seed=7, config=RECACHE.replace(recache_on_prompt_change=False)),
    )
    for _ in range(4):
        a, b = recached.step(), kept.step()
        assert np.array_equal(a.frames, b.frames)
    held = list(recached.cache.held[0])
    recached.set_prompt("a snowfield")
    kept.set_prompt("a snowfield")
    a, b = recached.step(), kept.step()
    assert not a.flushed and a.positions == b.positions == (0, 1, 2, 3)  # a full window, nothing trimmed
    assert recached.cache.held[0] == [*held[:1], *held[2:], 4]
    assert not np.array_equal(a.frames, b.frames)  # the held frames' keys were renewed under the new prompt


def test_recache_and_flush_are_not_both_on() -> None:
    with pytest.raises(ValueError, match="either flushes or recaches"):
        EngineConfig(recache_on_prompt_change=True)


def test_cut_shifts_only_the_first_block_after_it() -> None:
    delta = 42
    world = tiny_world(EngineConfig(cut_delta=delta))
    session = world.session("a meadow", seed=3)
    for _ in range(4):
        session.step()
    session.cut("a desert")
    cut_block = session.step()
    after = [session.step() for _ in range(3)]

    normal = list(range(1 + 2 + N))  # sink + flush_keep_frames + block
    assert cut_block.cut and cut_block.prompt == "a desert"
    assert cut_block.positions == (*normal[:3], *(p + delta for p in normal[3:]))  # 0,1,2,45,46,47
    for block in after:
        assert not block.cut
        assert block.positions == tuple(range(W))


def test_cut_without_sink_starts_a_fresh_window() -> None:
    world = tiny_world(EngineConfig(cut_keeps_sink=False))
    session = world.session("a meadow", seed=3)
    for _ in range(3):
        session.step()
    session.cut("a desert")
    block = session.step()
    assert block.cut and block.positions == (0, 1, 2)
    assert session.cache.held[0][0] == 9  # the cut block's first frame is the new sink


def test_same_seed_same_frames_and_explicit_noise() -> None:
    world = tiny_world()
    a, b = world.session("x", seed=5), world.session("x", seed=5)
    for _ in range(3):
        assert np.array_equal(a.step().frames, b.step().frames)
    noise = torch.randn(world.latent_shape(N), generator=torch.Generator().manual_seed(0))
    c, d = world.session("x", seed=1), world.session("x", seed=1)
    assert torch.equal(c.step(noise=noise).latents, d.step(noise=noise).latents)
    with pytest.raises(ValueError, match="noise has shape"):
        c.step(noise=torch.zeros(1, 2, 3))


def test_first_block_frame_counts(world) -> None:
    session = world.session("a meadow")
    first, second = session.step(), session.step()
    assert first.frames.shape == (1 + (N - 1) * 4, 32, 32, 3) and first.frames.dtype == np.uint8
    assert second.frames.shape == (N * 4, 32, 32, 3)
    assert session.frames_generated == first.frames.shape[0] + second.frames.shape[0]


def test_lead_in_blocks_are_generated_and_kept_as_context_but_not_shown() -> None:
    world = tiny_world(EngineConfig(lead_in_blocks=2))
    led = world.session("a meadow", seed=6)
    plain = world.session("a meadow", seed=6, lead_in_blocks=0)
    hidden = [plain.step(), plain.step()]
    for _ in range(3):
        a, b = led.step(), plain.step()
        assert np.array_equal(a.frames, b.frames) and a.positions == b.positions
        assert a.index == b.index - 2
    assert hidden[0].frames.shape[0] == 1 + (N - 1) * 4 and a.frames.shape[0] == N * 4
    assert world.block_video_frames() == (N * 4, N * 4)
    assert led.latent_frames == plain.latent_frames and led.frames_generated == 3 * N * 4
    with pytest.raises(ValueError, match="lead_in_blocks must be 0 or more"):
        EngineConfig(lead_in_blocks=-1)


def test_a_non_finite_block_stops_the_session_naming_it() -> None:
    world = tiny_world()
    session = world.session("a meadow", seed=1)
    session.step()
    with torch.no_grad():
        world.model.transformer.proj_out.bias.fill_(float("inf"))
    try:
        with pytest.raises(NonFiniteError, match="block 1: the model made NaN or Inf latents"):
            session.step()
        assert session.block_index == 1 and session.cache.held[0] == [0, 1, 2]  # nothing of it kept
    finally:
        with torch.no_grad():
            world.model.transformer.proj_out.bias.zero_()


def test_prompt_is_encoded_once(world) -> None:
    session = world.session("a lake")
    before = world.text_encoder.encoded
    session.set_prompt("a forest")
    session.step()
    session.set_prompt("a lake")
    session.step()
    world.session("a forest")
    assert world.text_encoder.encoded - before <= 1  # only "a forest" was new


def test_run_schedule_flushes_and_cuts_where_the_plan_says(world) -> None:
    from worldsim.schedule import BlockTiming, parse_schedule
    from worldsim.session import run_schedule

    schedule = parse_schedule("a meadow [2b] | a meadow at night [1b] | a city [2b#]")
    planned = world.session("a meadow", seed=4)
    plan = schedule.plan(BlockTiming(9, 12, 16.0))
    assert plan.blocks == 5
    blocks = list(run_schedule(planned, plan.events, plan.blocks))

    manual = world.session("a meadow", seed=4)
    expected = [manual.step(), manual.step()]
    manual.set_prompt("a meadow at night")
    expected.append(manual.step())
    manual.cut("a city")
    expected += [manual.step(), manual.step()]

    assert [(b.prompt, b.flushed, b.cut) for b in blocks] == [
        ("a meadow", False, False),
        ("a meadow", False, False),
        ("a meadow at night", True, False),
        ("a city", True, True),
        ("a city", False, False),
    ]
    for got, want in zip(blocks, expected, strict=True):
        assert np.array_equal(got.frames, want.frames)


def reference_keep(frames: list[int], capacity: int, sink: int) -> list[int]:
    """The cache rule written out plainly: the first `sink` frames, then the newest that fit."""
    sinks = min(sink, len(frames), capacity)
    room = capacity - sinks
    return frames[:sinks] + (frames[sinks:][-room:] if room > 0 else [])


@pytest.mark.parametrize(("sink", "keep", "window"), [(0, 0, 6), (0, 2, 6), (1, 0, 6), (2, 1, 8), (0, 0, 3)])
def test_cache_rules_hold_for_other_sizes(sink: int, keep: int, window: int) -> None:
    """Commit, flush and cut keep the sink and the newest frames for any sizes, empty windows included."""
    config = EngineConfig(
        sink_frames=sink, flush_keep_frames=keep, window_frames=window, denoising_steps=(1000,)
    )
    session = tiny_world(config).session("a meadow", seed=0)
    capacity = window - N
    expected: list[int] = []
    for index in range(6):
        if index == 3:
            session.set_prompt("a desert")
        if index == 5:
            session.cut("a city")
        if index in (3, 5):
            expected = reference_keep(expected, min(sink, len(expected)) + keep, sink)
        held_before = len(expected)
        block = session.step()
        assert len(block.positions) == held_before + N
        expected = reference_keep([*expected, *range(index * N, index * N + N)], capacity, sink)
        assert session.cache.held[0] == expected
        assert block.flushed == (index in (3, 5))


def test_context_noise_renoises_at_the_level_the_model_is_told() -> None:
    from worldsim.sampler import renoise

    x0 = torch.zeros(1, 1, 1, 4, 4)
    noisy = renoise(x0, 250, torch.Generator().manual_seed(0))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy, 0.25 * eps)
    assert renoise(x0, 0, torch.Generator()) is x0


def test_guidance_with_the_empty_prompt_changes_nothing() -> None:
    """u + g (c - u) = c when the prompt is the empty prompt, through the batched call and the cache."""
    world = tiny_world()
    plain, guided = world.session("", seed=3), world.session("", seed=3, guidance_scale=4.0)
    for _ in range(3):
        torch.testing.assert_close(guided.step().latents, plain.step().latents, atol=1e-5, rtol=1e-5)


def test_guidance_combines_the_prompt_and_the_empty_prompt() -> None:
    from worldsim.sampler import FlowMatchSchedule, sample_block

    world = tiny_world()
    session = world.session("a lake", seed=2, guidance_scale=3.0)
    noise = torch.randn(world.latent_shape(N), generator=torch.Generator().manual_seed(9))
    got = session.step(noise=noise).latents
    model, config = world.model, session.config
    positions = block_positions(config, [], 0)
    one = torch.ones(1)

    def flow(x: torch.Tensor, t: float) -> torch.Tensor:
        c = model(x, one * t, world.text_context("a lake"), positions)[0]
        u = model(x, one * t, world.text_context(""), positions)[0]
        return u + 3.0 * (c - u)

    schedule = FlowMatchSchedule(config.denoising_steps, config.shift)
    expected = sample_block(flow, schedule, noise, torch.Generator().manual_seed(2))[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    unguided = world.session("a lake", seed=2).step(noise=noise).latents
    assert not torch.allclose(got, unguided, atol=1e-3)
    session.set_prompt("a city")  # the (prompt, empty prompt) pair follows the new prompt
    session.step()
    assert torch.equal(session._guided_text.keys[0][:1], world.text_context("a city").keys[0])


def test_guidance_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="guidance_scale"):
        EngineConfig(guidance_scale=0.5)


def test_a_prompt_set_before_the_first_block_is_the_start_prompt_even_with_lead_in() -> None:
    world = tiny_world(EngineConfig(lead_in_blocks=2))
    changed = world.session("a meadow", seed=2)
    changed.set_prompt("a desert")
    changed.cut("a desert")
    direct = world.session("a desert", seed=2)
    a, b = changed.step(), direct.step()
    assert not a.flushed and not a.cut and a.prompt == "a desert" and changed.start_prompt == "a desert"
    assert np.array_equal(a.frames, b.frames)
