"""Batched rollouts (worldsim.batch) against single sessions, and the cache and decoder pieces under them.

A rollout of a batch must generate what a ``Session`` with the same prompt, seed and changes
generates on its own. Not bit for bit: batched matrix products and convolutions sum in another
order, a rollout whose cache is shorter than its neighbours' attends over masked padding, and
those float32 roundings (about 1e-7 relative an operation) pass through every denoising step and
every later block. Measured on the shipped bundle over 9 blocks: latents within 4e-5, frames
within 1 grey level. The tolerances below (latents 1e-4 absolute, frames 2 levels with at most
one pixel value in 200 differing) are a small multiple of that; a real mistake (a wrong
position, a flush on the wrong rollout, a noise row drawn from another generator) moves latents
by 0.1 or more and most pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import worldsim
from tests.conftest import tiny_world
from worldsim.batch import BatchSession
from worldsim.cache import KVCache
from worldsim.config import EngineConfig
from worldsim.session import Block, NonFiniteError

LATENT_ATOL = 1e-4
FRAME_LEVELS = 2
FRAME_SHARE = 0.005

PROMPTS = ["a meadow", "a desert at night", "a snowy tundra", "a city street"]
# rollout -> block -> (prompt, cut): changes and cuts at different blocks in each rollout
EVENTS: dict[int, dict[int, tuple[str, bool]]] = {
    0: {2: ("a meadow at night", False), 5: ("a desert", True)},
    1: {1: ("a desert at dawn", False), 3: ("a desert at dusk", False)},
    2: {4: ("a meadow in fog", True), 6: ("a meadow in rain", False)},
    3: {},
}
RESTART = (3, 4, "a harbour", 77)  # rollout 3 starts over before block 4, from this prompt and seed
BLOCKS = 8


def single_rollouts(world: worldsim.World, config: EngineConfig) -> list[list[Block]]:
    """What each rollout makes on its own: a Session per rollout (and one more after the restart)."""
    rollouts = []
    for row, prompt in enumerate(PROMPTS):
        session = world.session(prompt, seed=100 + row, config=config)
        blocks = []
        for index in range(BLOCKS):
            if (row, index) == RESTART[:2]:
                session = world.session(RESTART[2], seed=RESTART[3], config=config)
            if index in EVENTS[row]:
                session.follow(*EVENTS[row][index])
            blocks.append(session.step())
        rollouts.append(blocks)
    return rollouts


def batched_rollouts(world: worldsim.World, config: EngineConfig) -> list[list[Block]]:
    batch = BatchSession(world, PROMPTS, [100 + row for row in range(len(PROMPTS))], config=config)
    steps = []
    for index in range(BLOCKS):
        for row in range(batch.size):
            if (row, index) == RESTART[:2]:
                batch.restart(row, RESTART[2], RESTART[3])
            if index in EVENTS[row]:
                batch.follow(row, *EVENTS[row][index])
        steps.append(batch.step())
    return [[step[row] for step in steps] for row in range(batch.size)]


def assert_same_rollouts(single: list[list[Block]], batched: list[list[Block]]) -> None:
    for row, (ones, ours) in enumerate(zip(single, batched, strict=True)):
        for one, our in zip(ones, ours, strict=True):
            where = f"rollout {row}, block {one.index}"
            assert (our.index, our.prompt, our.positions) == (one.index, one.prompt, one.positions), where
            assert (our.flushed, our.cut, our.cache_frames) == (one.flushed, one.cut, one.cache_frames), where
            latent_gap = float((our.latents - one.latents).abs().max())
            assert latent_gap < LATENT_ATOL, f"{where}: latents differ by {latent_gap}"
            assert our.frames.shape == one.frames.shape, where
            gap = np.abs(our.frames.astype(int) - one.frames.astype(int))
            assert gap.max() <= FRAME_LEVELS, f"{where}: frames differ by {gap.max()} levels"
            assert (gap > 0).mean() <= FRAME_SHARE, f"{where}: {(gap > 0).mean():.2%} of pixel values differ"


@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(flush_keep_frames=1),  # relative positions, a flush that trims, cuts keep the sink
        EngineConfig(
            positions="absolute", cut_keeps_sink=False, flush_keep_frames=1
        ),  # fresh window at a cut
        EngineConfig(guidance_scale=2.0, lead_in_blocks=1, block_frames=1, window_frames=4),
        EngineConfig(
            block_frames=1, window_frames=4, flush_on_prompt_change=False, recache_on_prompt_change=True
        ),
    ],
    ids=["relative", "absolute-fresh-cut", "guided-lead-in", "recache"],
)
def test_batched_rollouts_equal_single_sessions(config: EngineConfig) -> None:
    world = tiny_world(config)
    assert_same_rollouts(single_rollouts(world, config), batched_rollouts(world, config))


def test_batched_rollouts_equal_single_sessions_on_the_shipped_bundle() -> None:
    world = worldsim.load("tiny")
    config = world.config.replace(flush_keep_frames=1)  # so that a flush trims the bundle's window
    assert_same_rollouts(single_rollouts(world, config), batched_rollouts(world, config))


def test_a_rollout_does_not_depend_on_its_neighbours() -> None:
    """Rollout 0 makes the same blocks whatever the other rollouts of its batch do."""
    world = tiny_world(EngineConfig(flush_keep_frames=1))
    runs = []
    for others in (["a desert", "a tundra"], ["a city", "a harbour"]):
        batch = BatchSession(world, ["a meadow", *others], [1, 2 + len(others[0]), 3])
        blocks = []
        for index in range(5):
            if index == 2:
                batch.cut(1, "somewhere else")
                batch.set_prompt(2, "a forest")
            blocks.append(batch.step()[0])
        runs.append(blocks)
    for a, b in zip(*runs, strict=True):
        assert float((a.latents - b.latents).abs().max()) < LATENT_ATOL


def test_batch_arguments_and_nan_are_refused_by_name() -> None:
    world = tiny_world()
    with pytest.raises(ValueError, match="one seed per prompt"):
        BatchSession(world, ["a", "b"], [0])
    batch = BatchSession(world, ["a", "b"], [0, 1])
    batch.step()
    for bad in (
        lambda: batch.restart(-1, "c", 0),
        lambda: batch.set_prompt(2, "c"),
        lambda: batch.step([1, 1]),
    ):
        with pytest.raises(ValueError, match=r"distinct rollouts of 0\.\.1"):
            bad()
    with pytest.raises(ValueError, match="distinct rollouts"):
        batch.cache.put([5], batch.cache.take([0]))
    with torch.no_grad():
        world.model.transformer.proj_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="rollout 0, block 1, rollout 1, block 1"):
        batch.step()


def _filled_cache(batch: int, frames: int) -> KVCache:
    """A cache whose rows hold `frames` frames each; every value says (row, frame)."""
    cache = KVCache(num_layers=2, capacity=4, sink_frames=1, batch=batch)
    for frame in range(frames):
        kv = torch.stack([torch.full((3, 1, 2), 100.0 * row + frame) for row in range(batch)])
        cache.commit([(kv, -kv), (kv + 0.5, kv)], [frame])
    return cache


def test_cache_take_and_put_move_rows_exactly() -> None:
    cache = _filled_cache(3, 4)
    cache.flush(1, [1])  # rows of different lengths: 4, 2, 4 frames
    taken = cache.take([1, 2])
    assert taken.held == [cache.held[1], cache.held[2]]
    layers, taken_layers = cache.layers(), taken.layers()
    assert layers is not None and taken_layers is not None
    assert torch.equal(taken_layers[0][0][1], layers[0][0][2])
    assert torch.equal(taken_layers[0][0][0, :6], layers[0][0][1, :6])  # row 1's 2 real frames
    assert taken.key_mask(1) is not None

    fresh = KVCache(num_layers=2, capacity=4, sink_frames=1, batch=1)
    cache.put([0], fresh)  # an emptied row among full ones
    assert [len(h) for h in cache.held] == [0, 2, 4]
    cache.put([0, 1], taken)  # and back: rows 1 and 2's frames now in rows 0 and 1
    assert cache.held == [taken.held[0], taken.held[1], cache.held[2]]
    put = cache.layers()
    assert put is not None
    for layer in range(2):
        for part in range(2):
            assert torch.equal(put[layer][part][0, :6], taken_layers[layer][part][0, :6])
            assert torch.equal(put[layer][part][1], layers[layer][part][2])
            assert torch.equal(put[layer][part][2], layers[layer][part][2])


def test_decoding_rows_together_equals_decoding_each_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    world = tiny_world()
    decoder = world.decoder
    calls: list[list[list[int]]] = []
    chunks_of = decoder._decode_chunks

    def spy(latents: torch.Tensor, states: list, chunks: list[list[int]]) -> list[torch.Tensor]:
        calls.append(chunks)
        return chunks_of(latents, states, chunks)

    monkeypatch.setattr(decoder, "_decode_chunks", spy)
    latents = torch.randn(3, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    together = [decoder.new_state() for _ in range(3)]
    alone = [decoder.new_state() for _ in range(3)]
    for chunk in range(3):  # the first chunk decodes row by row, later ones together
        block = latents[:, :, chunk : chunk + 1]
        ours = decoder.decode_rows(block, together)
        theirs = [decoder.decode(block[r : r + 1], alone[r]) for r in range(3)]
        for mine, single in zip(ours, theirs, strict=True):
            assert mine.shape == single.shape
            assert float((mine - single).abs().max()) < 1e-5
    assert [len(chunk) for chunk in calls[-1]] == [3]  # settled rows went through the decoder together
    assert [state.latent_frames for state in together] == [3, 3, 3]
    # a row that starts over decodes alone again (its first frame), next to settled rows
    together[1], alone[1] = decoder.new_state(), decoder.new_state()
    ours = decoder.decode_rows(latents[:, :, :1], together)
    theirs = [decoder.decode(latents[r : r + 1, :, :1], alone[r]) for r in range(3)]
    assert [v.shape[2] for v in ours] == [4, 1, 4]
    assert sorted(len(chunk) for chunk in calls[-1]) == [1, 2]
    assert [state.latent_frames for state in together] == [4, 1, 4]
    for mine, single in zip(ours, theirs, strict=True):
        assert float((mine - single).abs().max()) < 1e-5


def test_stepping_some_rollouts_leaves_the_others_where_they_are() -> None:
    config = EngineConfig(flush_keep_frames=1)
    world = tiny_world(config)
    batch = BatchSession(world, ["a meadow", "a desert", "a tundra"], [5, 6, 7], config=config)
    first = batch.step()
    batch.set_prompt(1, "a desert at night")
    extra = batch.step([1])  # only rollout 1 moves (and flushes)
    last = batch.step()
    assert [b.index for b in first] == [0, 0, 0] and [b.index for b in extra] == [1]
    assert [b.index for b in last] == [1, 2, 1]
    for row, prompt, blocks in ((0, "a meadow", 2), (1, "a desert", 3), (2, "a tundra", 2)):
        session = world.session(prompt, seed=5 + row, config=config)
        made = []
        for index in range(blocks):
            if row == 1 and index == 1:
                session.set_prompt("a desert at night")
            made.append(session.step())
        assert float((made[-1].latents - last[row].latents).abs().max()) < LATENT_ATOL
        assert made[-1].positions == last[row].positions and made[-1].cache_frames == last[row].cache_frames
    with pytest.raises(ValueError, match="distinct rollouts"):
        batch.step([0, 0])
