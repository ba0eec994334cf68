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
        # the prompts of the last call, their text keys/values and, with guidance, the empty prompt's too
        self._texts: tuple[tuple[str, ...], TextContext, TextContext | None] | None = None

    @property
    def size(self) -> int:
        """Rollouts in the batch."""
        return len(self.rollouts)

    def set_prompt(self, row: int, prompt: str) -> None:
        """Rollout `row` follows `prompt` from its next block on; a change fires a KV Flush before it."""
        self._rollout(row).pending_prompt = prompt

    def cut(self, row: int, prompt: str | None = None) -> None:
        """Rollout `row` cuts to a new scene (RoPE Cut) before its next block, optionally to a new prompt."""
        rollout = self._rollout(row)
        rollout.pending_cut = True
        if prompt is not None:
            rollout.pending_prompt = prompt

    def follow(self, row: int, prompt: str, cut: bool = False) -> None:
        """Rollout `row` goes to `prompt` before its next block: a cut to it, or a prompt change."""
        if cut:
            self.cut(row, prompt)
        else:
            self.set_prompt(row, prompt)

    def restart(self, row: int, prompt: str, seed: int, start_image: np.ndarray | None = None) -> None:
        """Start rollout `row` over from `prompt` and `seed` (or from a picture) at the next step."""
        self._rollout(row)
        self.rollouts[row] = self._fresh(prompt, seed, start_image)
        self.cache.clear([row])

    @torch.no_grad()
    def step(self, rows: Sequence[int] | None = None) -> list[Block]:
        """Generate, commit and decode the next block of every rollout (or of `rows` only); a Block each.

        The rollouts not in `rows` do not move. NonFiniteError, naming the rollouts and blocks, if
        the model makes NaN or Inf latents; as with ``Session.step``, a batch that raised it is
        left mid-block (its flushes done, its block not committed) and should be restarted.
        """
        if rows is None or list(rows) == list(range(self.size)):
            return self._step(list(range(self.size)), self.cache)
        rows = self.cache.check_rows(rows)
        if not rows:
            raise ValueError("step() needs at least one rollout")
        cache = self.cache.take(rows)
        blocks = self._step(rows, cache)
        self.cache.put(rows, cache)
        return blocks

    # ------------------------------------------------------------------------------------------------

    def _step(self, rows: list[int], cache: KVCache) -> list[Block]:
        """One block of the rollouts `rows`, whose keys/values `cache` holds (its row k is rows[k])."""
        started = time.perf_counter()
        rollouts = [self.rollouts[row] for row in rows]
        for r in rollouts:  # before the first block a new prompt is simply the start prompt
            if r.latent_frames == 0 and r.pending_prompt is not None:
                r.prompt = r.start_prompt = r.pending_prompt
                r.text, r.pending_prompt, r.pending_cut = None, None, False
        fresh = [k for k, r in enumerate(rollouts) if r.latent_frames == 0]
        if fresh:
            self._begin(rows, cache, fresh)

        # 1. Prompt changes -> new text keys/values (a KV Flush in step 2); scene changes -> RoPE Cuts.
        changed = []
        for r in rollouts:
            change = r.pending_prompt is not None and r.pending_prompt != r.prompt
            if change and r.pending_prompt is not None:
                r.prompt, r.text = r.pending_prompt, None
            changed.append(change)
        cuts = [r.pending_cut for r in rollouts]
        x0, window = self._generate(rows, cache, changed, cuts)
        for r in rollouts:
            r.pending_prompt, r.pending_cut = None, False
        denoised = time.perf_counter()

        # 5. Decode, every rollout with its own state.
        videos = self.world.decoder.decode_rows(x0, [r.decoder_state for r in rollouts])
        frames = [to_uint8_frames(video)[0].cpu().numpy() for video in videos]  # (T, H, W, 3) each
        decoded = time.perf_counter()

        blocks = []
        for k, r in enumerate(rollouts):
            blocks.append(
                Block(
                    index=r.block_index,
                    frames=frames[k],
                    latents=x0[k].cpu(),
                    prompt=r.prompt,
                    positions=tuple(window.row_positions(k)),
                    flushed=window.flushed[k],
                    cut=window.cut[k],
                    cache_frames=cache.frames(k),
                    seconds={"transformer": denoised - started, "decode": decoded - denoised},
                )
            )
            r.block_index += 1
        return blocks

    def _rollout(self, row: int) -> Rollout:
        self.cache.check_rows([row])
        return self.rollouts[row]

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

    def _begin(self, rows: list[int], cache: KVCache, fresh: list[int]) -> None:
        """Start the fresh rollouts (positions `fresh` of `rows` and `cache`): from their picture, or
        through the engine's lead-in blocks, which are not returned.

        They run on a cache of their own, so the other rollouts do not move, and then take their rows.
        """
        pictured = [k for k in fresh if self.rollouts[rows[k]].start_image is not None]
        for k in pictured:
            r, own = self.rollouts[rows[k]], cache.take([k])
            assert r.start_image is not None
            start_from_image(
                self.world, own, self.config, r.start_image, self._text(rows[k]), r.generator, r.decoder_state
            )
            r.latent_frames = 1
            cache.put([k], own)
        plain = [k for k in fresh if k not in pictured]
        if plain and self.config.lead_in_blocks:
            own = cache.take(plain)
            states = [self.rollouts[rows[k]].decoder_state for k in plain]
            for _ in range(self.config.lead_in_blocks):
                x0, _ = self._generate(
                    [rows[k] for k in plain], own, [False] * len(plain), [False] * len(plain)
                )
                self.world.decoder.decode_rows(x0, states)
            cache.put(plain, own)

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
        prompts = tuple(self.rollouts[row].prompt for row in rows)
        if self._texts is None or self._texts[0] != prompts:  # the same prompts block after block
            text = TextContext.concat([self._text(row) for row in rows])
            guided = None
            if self.config.guidance_scale != 1.0:
                if self._empty is None:
                    self._empty = self.world.text_context("")
                guided = TextContext.concat([text, *[self._empty] * len(rows)])
            self._texts = (prompts, text, guided)
        _, text, guided = self._texts
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
