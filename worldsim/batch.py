"""Many independent rollouts advanced together: one model call per denoising step for all of them.

A ``BatchSession`` holds N rollouts over one batched KV cache (``worldsim.cache``). Each has its own
prompt, seed (its own random generator), KV Flushes and RoPE Cuts at any block, temporal positions,
decoder state and start-over; caches of different lengths after a flush are masked, never flushed
together. A rollout in a batch generates what a ``Session`` with the same prompt, seed and changes
generates on its own, up to the float rounding of batched kernels (tests/test_batch.py).

    batch = BatchSession(world, ["a meadow", "a desert"], seeds=[0, 1])
    blocks = batch.step()            # one Block per rollout
    batch.follow(1, "a desert at night")
    batch.restart(0, "a tundra", seed=7)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from models.causal_wan import TextContext
from models.streaming_vae import DecoderState, to_uint8_frames
from worldsim.cache import KVCache
from worldsim.config import EngineConfig
from worldsim.rollout import BlockWindow
from worldsim.sampler import gaussian
from worldsim.session import Block, BlockRequest, Components, generate_block, start_from_image


@dataclass
class Rollout:
    """One rollout of a batch: where it stands and what it asks of its next block."""

    seed: int
    start_prompt: str
    prompt: str
    config: EngineConfig
    generator: torch.Generator
    decoder_state: DecoderState
    start_image: np.ndarray | None = None
    block_index: int = 0  # blocks returned so far
    latent_frames: int = 0  # latent frames generated so far, lead-in included
    pending_prompt: str | None = None
    pending_cut: bool = False
    text: TextContext | None = field(default=None, repr=False)


class BatchSession:
    """N endless rollouts stepped together; prompt changes, cuts and restarts per rollout."""

    def __init__(
        self,
        world: Components,
        prompts: Sequence[str],
        seeds: Sequence[int],
        config: EngineConfig | None = None,
    ) -> None:
        if not prompts or len(prompts) != len(seeds):
            raise ValueError(
                f"a batch needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds"
            )
        self.world = world
        self.config = config or world.config
        self.cache = KVCache(
            world.model.num_layers, self.config.kept_frames, self.config.sink_frames, batch=len(prompts)
        )
        self.rollouts = [self._fresh(prompt, seed) for prompt, seed in zip(prompts, seeds, strict=True)]
        self._empty: TextContext | None = None

    @property
    def size(self) -> int:
        """Rollouts in the batch."""
        return len(self.rollouts)

    def set_prompt(self, row: int, prompt: str) -> None:
        """Rollout `row` follows `prompt` from its next block on; a change fires a KV Flush before it."""
        self.rollouts[row].pending_prompt = prompt

    def cut(self, row: int, prompt: str | None = None) -> None:
        """Rollout `row` cuts to a new scene (RoPE Cut) before its next block, optionally to a new prompt."""
        self.rollouts[row].pending_cut = True
        if prompt is not None:
            self.rollouts[row].pending_prompt = prompt

    def follow(self, row: int, prompt: str, cut: bool = False) -> None:
        """Rollout `row` goes to `prompt` before its next block: a cut to it, or a prompt change."""
        if cut:
            self.cut(row, prompt)
        else:
            self.set_prompt(row, prompt)

    def restart(self, row: int, prompt: str, seed: int, start_image: np.ndarray | None = None) -> None:
        """Start rollout `row` over from `prompt` and `seed` (or from a picture) at the next step."""
        self.rollouts[row] = self._fresh(prompt, seed, start_image)
        self.cache.clear([row])

    @torch.no_grad()
    def step(self) -> list[Block]:
        """Generate, commit and decode the next block of every rollout; one Block per rollout.

        NonFiniteError, naming the rollouts and blocks, if the model makes NaN or Inf latents.
        """
        started = time.perf_counter()
        fresh = [row for row, r in enumerate(self.rollouts) if r.latent_frames == 0]
        for row in fresh:  # before the first block a new prompt is simply the start prompt
            r = self.rollouts[row]
            if r.pending_prompt is not None:
                r.prompt = r.start_prompt = r.pending_prompt
                r.text, r.pending_prompt, r.pending_cut = None, None, False
        if fresh:
            self._begin(fresh)

        # 1. Prompt changes -> new text keys/values (a KV Flush in step 2); scene changes -> RoPE Cuts.
        changed = []
        for r in self.rollouts:
            change = r.pending_prompt is not None and r.pending_prompt != r.prompt
            if change and r.pending_prompt is not None:
                r.prompt, r.text = r.pending_prompt, None
            changed.append(change)
        cuts = [r.pending_cut for r in self.rollouts]
        x0, window = self._generate(list(range(self.size)), self.cache, changed, cuts)
        for r in self.rollouts:
            r.pending_prompt, r.pending_cut = None, False
        denoised = time.perf_counter()

        # 5. Decode, every rollout with its own state.
        videos = self.world.decoder.decode_rows(x0, [r.decoder_state for r in self.rollouts])
        frames = [to_uint8_frames(video)[0].cpu().numpy() for video in videos]  # (T, H, W, 3) each
        decoded = time.perf_counter()

        blocks = []
        for row, r in enumerate(self.rollouts):
            blocks.append(
                Block(
                    index=r.block_index,
                    frames=frames[row],
                    latents=x0[row].cpu(),
                    prompt=r.prompt,
                    positions=tuple(window.row_positions(row)),
                    flushed=window.flushed[row],
                    cut=window.cut[row],
                    cache_frames=self.cache.frames(row),
                    seconds={"transformer": denoised - started, "decode": decoded - denoised},
                )
            )
            r.block_index += 1
        return blocks

    # ------------------------------------------------------------------------------------------------

    def _fresh(self, prompt: str, seed: int, start_image: np.ndarray | None = None) -> Rollout:
        return Rollout(
            seed=seed,
            start_prompt=prompt,
            prompt=prompt,
            config=self.config,
            generator=torch.Generator().manual_seed(seed),
            decoder_state=self.world.decoder.new_state(),
            start_image=None if start_image is None else self.world.fit_image(start_image),
        )

    def _begin(self, rows: list[int]) -> None:
        """Start fresh rollouts: from their picture, or through the engine's lead-in blocks (not returned).

        They run on a cache of their own, so the other rollouts do not move, and then take their rows.
        """
        pictured = [row for row in rows if self.rollouts[row].start_image is not None]
        for row in pictured:
            r, cache = self.rollouts[row], self.cache.take([row])
            assert r.start_image is not None
            start_from_image(
                self.world, cache, self.config, r.start_image, self._text(row), r.generator, r.decoder_state
            )
            r.latent_frames = 1
            self.cache.put([row], cache)
        plain = [row for row in rows if row not in pictured]
        if plain and self.config.lead_in_blocks:
            cache = self.cache.take(plain)
            states = [self.rollouts[row].decoder_state for row in plain]
            for _ in range(self.config.lead_in_blocks):
                x0, _ = self._generate(plain, cache, [False] * len(plain), [False] * len(plain))
                self.world.decoder.decode_rows(x0, states)
            self.cache.put(plain, cache)

    def _text(self, row: int) -> TextContext:
        r = self.rollouts[row]
        if r.text is None:
            r.text = self.world.text_context(r.prompt)
        return r.text

    def _generate(
        self, rows: list[int], cache: KVCache, changed: list[bool], cuts: list[bool]
    ) -> tuple[Tensor, BlockWindow]:
        """Steps 2-4 for the given rollouts over `cache` (which holds exactly those rollouts)."""
        n = self.config.block_frames
        rollouts = [self.rollouts[row] for row in rows]
        text = TextContext.concat([self._text(row) for row in rows])
        guided = None
        if self.config.guidance_scale != 1.0:
            if self._empty is None:
                self._empty = self.world.text_context("")
            guided = TextContext.concat([text, *[self._empty] * len(rows)])
        generators = [r.generator for r in rollouts]
        noise = gaussian((len(rows), *self.world.latent_shape(n)[1:]), generators)
        request = BlockRequest(
            [r.latent_frames for r in rollouts],
            changed,
            cuts,
            [f"rollout {row}, block {self.rollouts[row].block_index}" for row in rows],
        )
        x0, window = generate_block(
            self.world.model, cache, self.config, request, text, guided, noise, generators
        )
        for r in rollouts:
            r.latent_frames += n
        return x0, window
