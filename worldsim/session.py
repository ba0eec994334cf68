"""A rollout session: blocks of video generated one after another, forever, in constant memory.

Each ``step()`` (Self-Forcing loop with infinity-RoPE, arXiv 2511.20649):

1. apply a pending prompt change (KV Flush) or scene change (RoPE Cut);
2. compute the window's temporal positions (``worldsim.positions``);
3. denoise the block from noise in a few flow-matching steps, attending to the cache (with
   classifier-free guidance against the empty prompt when ``guidance_scale`` > 1);
4. run the model once more on the clean block and commit its keys/values to the cache;
5. decode the block to video frames with the streaming decoder.

Steps 1, 2 and 4 are ``worldsim.rollout``'s, which training calls too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from models.causal_wan import CausalWanTransformer, TextContext
from models.streaming_vae import DecoderState, StreamingDecoder, to_uint8_frames
from worldsim.cache import KVCache
from worldsim.config import EngineConfig
from worldsim.rollout import BlockWindow, close_block, open_block, recache
from worldsim.sampler import Generators, gaussian, renoise, sample_block

if TYPE_CHECKING:
    from worldsim.schedule import BlockEvent


class Components(Protocol):
    """What a session runs on (a ``worldsim.World`` is one): the model, the decoder and the text."""

    model: CausalWanTransformer
    decoder: StreamingDecoder
    config: EngineConfig

    def text_context(self, prompt: str) -> TextContext:
        """Cross-attention keys/values of a prompt."""
        ...

    def latent_shape(self, frames: int) -> tuple[int, int, int, int, int]:
        """Shape (1, C, frames, h, w) of a latent block."""
        ...

    def fit_image(self, image: np.ndarray) -> np.ndarray:
        """A picture fitted to the frame size."""
        ...

    def encode_image(self, image: np.ndarray, still_latents: int = 1) -> Tensor:
        """The normalised latent frame (1, C, 1, h, w) of a fitted picture."""
        ...


@dataclass(frozen=True)
class Block:
    """One generated block."""

    index: int  # block number in the rollout, from 0
    frames: np.ndarray  # (T, H, W, 3) uint8 video frames
    latents: Tensor  # (C, n, h, w) normalised clean latents
    prompt: str
    positions: tuple[int, ...]  # temporal positions of the window (held frames, then the block)
    flushed: bool  # a KV Flush ran before this block (a prompt change or a cut)
    cut: bool  # a RoPE Cut ran before this block
    cache_frames: int  # frames held in the cache after this block
    seconds: dict[str, float] = field(default_factory=dict)  # wall time by stage: transformer, decode


class NonFiniteError(RuntimeError):
    """The model made NaN or Inf latents; the message names the block."""


class Session:
    """An endless rollout from a prompt and a seed; change the prompt or cut at any block.

    With ``lead_in_blocks`` (an engine setting), the first ``step()`` first generates that many
    blocks under the start prompt that it commits to the cache and the decoder's state but does not
    return: a model's first block, made with nothing to attend to, can be its worst.

    With ``start_image``, the rollout starts from a picture instead: fitted to the frame size and
    encoded by the world's VAE (``image_still_latents``), it becomes latent frame 0, committed to the
    cache as the global sink (a context pass under the start prompt) and decoded into the decoder's
    state; the first block continues from it. No lead-in is needed then.
    """

    def __init__(
        self,
        world: Components,
        prompt: str,
        seed: int = 0,
        config: EngineConfig | None = None,
        start_image: np.ndarray | None = None,
    ) -> None:
        self.world = world
        self.synchronize_timing = False  # wait for the device at stage ends, so stage times are exact
        self.config = config or world.config
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.cache = KVCache(world.model.num_layers, self.config.kept_frames, self.config.sink_frames)
        self.decoder_state: DecoderState = world.decoder.new_state()
        self.block_index = 0  # blocks returned so far
        self.latent_frames = 0  # latent frames generated so far, lead-in included
        self.frames_generated = 0  # video frames returned so far
        self.start_prompt = prompt
        self.prompt = prompt
        self._text: TextContext = world.text_context(prompt)
        self._guided_text: TextContext | None = None  # (prompt, empty prompt), made when guidance needs it
        self._pending_prompt: str | None = None
        self._pending_cut = False
        self.start_image = None if start_image is None else world.fit_image(start_image)

    def set_prompt(self, prompt: str) -> None:
        """Follow `prompt` from the next block on; a change fires a KV Flush before it."""
        self._pending_prompt = prompt

    def cut(self, prompt: str | None = None) -> None:
        """Make a scene cut (RoPE Cut) before the next block, optionally to a new prompt."""
        self._pending_cut = True
        if prompt is not None:
            self._pending_prompt = prompt

    def follow(self, prompt: str, cut: bool = False) -> None:
        """Go to `prompt` before the next block: a cut to it, or a prompt change (flushed if it differs)."""
        if cut:
            self.cut(prompt)
        else:
            self.set_prompt(prompt)

    @torch.no_grad()
    def step(self, noise: Tensor | None = None) -> Block:
        """Generate, commit and decode the next block; `noise` (1, C, n, h, w) overrides the seed's.

        NonFiniteError if the model makes NaN or Inf latents (nothing of that block is kept).
        """
        if noise is not None and tuple(noise.shape) != self.world.latent_shape(self.config.block_frames):
            expected = self.world.latent_shape(self.config.block_frames)
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {expected}")
        started = self.clock()
        if self.latent_frames == 0 and self._pending_prompt is not None:
            # before the first block a new prompt is simply the start prompt: nothing to flush or cut yet
            self.prompt = self.start_prompt = self._pending_prompt
            self._text = self.world.text_context(self.prompt)
            self._pending_prompt, self._pending_cut = None, False
        if self.latent_frames == 0 and self.start_image is not None:
            self._start_from_image(self.start_image)
        elif self.latent_frames == 0:
            for _ in range(self.config.lead_in_blocks):
                lead_in, _ = self._generate(None, changed=False, cut=False)
                self.world.decoder.decode(lead_in, self.decoder_state)

        # 1. Prompt change -> new text keys/values (a KV Flush in step 2); scene change -> RoPE Cut.
        changed = self._pending_prompt is not None and self._pending_prompt != self.prompt
        if changed and self._pending_prompt is not None:
            self.prompt = self._pending_prompt
            self._text = self.world.text_context(self.prompt)  # new cross-attention keys/values
            self._guided_text = None
        x0, window = self._generate(noise, changed=changed, cut=self._pending_cut)
        self._pending_prompt, self._pending_cut = None, False
        denoised = self.clock()

        # 5. Decode.
        video = self.world.decoder.decode(x0, self.decoder_state)
        frames = to_uint8_frames(video)[0].cpu().numpy()  # (T, H, W, 3)
        decoded = self.clock()

        block = Block(
            index=self.block_index,
            frames=frames,
            latents=x0[0].cpu(),
            prompt=self.prompt,
            positions=tuple(window.row_positions(0)),
            flushed=window.flushed[0],
            cut=window.cut[0],
            cache_frames=self.cache.frames(),
            seconds={"transformer": denoised - started, "decode": decoded - denoised},
        )
        self.block_index += 1
        self.frames_generated += frames.shape[0]
        return block

    def _generate(self, noise: Tensor | None, changed: bool, cut: bool) -> tuple[Tensor, BlockWindow]:
        """Steps 2-4: the window, the denoised block and its commit; returns the block's clean latents."""
        guided = None
        if self.config.guidance_scale != 1.0:
            if self._guided_text is None:  # once per prompt, not per block
                self._guided_text = TextContext.concat([self._text, self.world.text_context("")])
            guided = self._guided_text
        if noise is None:
            noise = gaussian(self.world.latent_shape(self.config.block_frames), self.generator)
        x0, window = generate_block(
            self.world.model,
            self.cache,
            self.config,
            BlockRequest([self.latent_frames], [changed], [cut], [f"block {self.block_index}"]),
            self._text,
            guided,
            noise,
            self.generator,
        )
        self.latent_frames += self.config.block_frames
        return x0, window

    def _start_from_image(self, image: np.ndarray) -> None:
        """Latent frame 0 from a picture: committed as the sink and decoded, but not returned."""
        start_from_image(
            self.world, self.cache, self.config, image, self._text, self.generator, self.decoder_state
        )
        self.latent_frames = 1

    def clock(self) -> float:
        """Seconds on a monotonic clock, after the device finishes its work if `synchronize_timing`."""
        if self.synchronize_timing and self.world.model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()


def start_from_image(
    world: Components,
    cache: KVCache,
    config: EngineConfig,
    image: np.ndarray,
    text: TextContext,
    generator: torch.Generator,
    decoder_state: DecoderState,
) -> None:
    """Latent frame 0 of a one-rollout `cache` from a fitted picture: committed as the sink, and decoded.

    The picture, encoded by the world's VAE as a still clip (``image_still_latents``), gets a
    context pass under the start prompt `text`; the decoder's state takes it in, so the first block
    continues from it.
    """
    model = world.model
    latent = world.encode_image(image, config.image_still_latents)  # (1, C, 1, h, w)
    window = open_block(cache, config.replace(block_frames=1), 0, changed=[False], cut=[False])
    timestep = torch.full((1,), float(config.context_noise), device=model.device)
    context = renoise(latent.to(model.device), config.context_noise, generator)
    close_block(model, cache, window, context.to(model.dtype), timestep, text)
    world.decoder.decode(latent, decoder_state)


@dataclass(frozen=True)
class BlockRequest:
    """What each rollout of a batch asks of its next block."""

    starts: Sequence[int]  # rollout index of the block's first latent frame
    changed: Sequence[bool]  # the prompt changed (a KV Flush)
    cuts: Sequence[bool]  # a scene cut (RoPE Cut)
    names: Sequence[str]  # how an error names the block ("block 7", "rollout 2, block 7")


def generate_block(
    model: CausalWanTransformer,
    cache: KVCache,
    config: EngineConfig,
    request: BlockRequest,
    text: TextContext,
    guided: TextContext | None,
    noise: Tensor,
    generator: Generators,
) -> tuple[Tensor, BlockWindow]:
    """Steps 2-4 for a batch of rollouts: the window, the denoised block and its commit to the cache.

    text: each rollout's prompt (B rows); guided: with guidance, the prompts followed by B empty
    prompts; noise (B, C, n, h, w); generator: one, or one per rollout. Returns the block's clean
    latents. NonFiniteError, naming the blocks, if the model makes NaN or Inf latents: then nothing
    of the block is committed.
    """
    # 2. KV Flush (or recache) or RoPE Cut, and the window's temporal positions.
    if config.recache_on_prompt_change:
        renew = [
            b
            for b, (changed, cut, start) in enumerate(
                zip(request.changed, request.cuts, request.starts, strict=True)
            )
            if changed and not cut and start > 0
        ]
        recache(model, cache, config, renew, text)
    window = open_block(cache, config, request.starts, changed=request.changed, cut=request.cuts)

    # 3. Denoise the block against the cache.
    batch = torch.ones(window.batch, device=model.device)
    guidance = config.guidance_scale
    if guidance == 1.0:

        def flow(x: Tensor, timestep: float) -> Tensor:
            return window.predict(model, x.to(model.dtype), batch * timestep, text)[0]

    else:  # one call over (prompts, empty prompts); both attend to the same cache
        if guided is None:
            raise ValueError("guidance needs the prompts followed by the empty prompts")
        pair = guided

        def flow(x: Tensor, timestep: float) -> Tensor:
            twice = x.to(model.dtype).repeat(2, 1, 1, 1, 1)
            both = window.predict(model, twice, batch.repeat(2) * timestep, pair)[0]
            conditional, unconditional = both.float().chunk(2)
            return unconditional + guidance * (conditional - unconditional)

    x0 = sample_block(flow, config.schedule, noise.to(model.device), generator)
    finite = torch.isfinite(x0).flatten(1).all(dim=1).tolist()
    if not all(finite):
        bad = ", ".join(name for name, ok in zip(request.names, finite, strict=True) if not ok)
        raise NonFiniteError(
            f"{bad}: the model made NaN or Inf latents "
            "(broken weights, or settings the model cannot run with)"
        )

    # 4. Context pass: the clean block's keys/values are what the cache keeps.
    context = renoise(x0, config.context_noise, generator)
    close_block(model, cache, window, context.to(model.dtype), batch * config.context_noise, text)
    return x0, window


def run_schedule(session: Session, events: Iterable[BlockEvent], blocks: int) -> Iterator[Block]:
    """Generate `blocks` blocks, switching prompt (flush) or cutting where the events say."""
    by_block = {event.block: event for event in events}
    for _ in range(blocks):
        event = by_block.get(session.block_index)
        if event is not None and session.block_index > 0:
            session.follow(event.prompt, event.cut)
        yield session.step()
