"""One block of the infinity-RoPE rollout for a batch of rollouts: the steps inference and training share.

``Session.step`` (inference) and the tiny model's training rollout (``envs.tiny.losses``) both
go through these two functions, so what is trained is exactly what runs (a test proves them
bit-identical):

1. ``open_block``: a KV Flush on each rollout whose prompt changed, a RoPE Cut on each that cuts,
   then each rollout's window: the temporal positions of its held frames and its block
   (``worldsim.positions``), the cached keys/values and which of them are real;
2. the caller runs the model on the block against the window (``BlockWindow.predict``): the
   sampler's denoising steps at inference, a noised training block in training;
3. ``close_block``: the context pass over the finished block writes its keys/values into the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from models.causal_wan import CausalWanTransformer, LayerKV, TextContext
from worldsim.cache import KVCache
from worldsim.config import EngineConfig
from worldsim.positions import block_positions


@dataclass(frozen=True)
class BlockWindow:
    """What the block being generated attends to, for every rollout of a batch."""

    start: int  # rollout index of the block's first latent frame
    frames: int  # latent frames in the block
    positions: list[list[int]]  # per rollout: its held frames (padded to the cache's slots), then the block
    past: list[LayerKV] | None  # per layer the cached keys/values, (B, slots * tokens, heads, head_dim)
    key_mask: Tensor | None  # (B, (slots + frames) * tokens): which keys are real; None when all are
    flushed: tuple[bool, ...]  # per rollout: a KV Flush ran before this block (a prompt change or a cut)
    cut: tuple[bool, ...]  # per rollout: a RoPE Cut ran before this block

    @property
    def batch(self) -> int:
        """Rollouts in the batch."""
        return len(self.positions)

    def predict(
        self, model: CausalWanTransformer, latents: Tensor, timestep: Tensor, text: TextContext
    ) -> tuple[Tensor, list[LayerKV]]:
        """The model's flow for the block (and its keys/values), attending to the window.

        `latents` may hold several copies of the batch one after another (a prompt and the empty
        prompt, for guidance): each copy attends to the same window.
        """
        copies = latents.shape[0] // self.batch
        if copies * self.batch != latents.shape[0]:
            raise ValueError(f"a call over {latents.shape[0]} latents for a window of {self.batch} rollouts")
        past, key_mask = self.past, self.key_mask
        if copies > 1 and past is not None:
            if self.batch == 1:  # a view, no copy
                past = [(k.expand(copies, -1, -1, -1), v.expand(copies, -1, -1, -1)) for k, v in past]
            else:
                past = [(k.repeat(copies, 1, 1, 1), v.repeat(copies, 1, 1, 1)) for k, v in past]
            key_mask = None if key_mask is None else key_mask.repeat(copies, 1)
        # one rollout: one position list serves every copy
        positions = self.positions[0] if self.batch == 1 else self.positions * copies
        return model(latents, timestep, text, positions, past, key_mask)


def open_block(
    cache: KVCache, config: EngineConfig, start: int, changed: Sequence[bool], cut: Sequence[bool]
) -> BlockWindow:
    """Steps 1-2 of a block: flush or cut each rollout that asks for it; the window of the block at `start`.

    changed[b]: rollout b's prompt changed before this block (a KV Flush if the engine flushes on a
    change); cut[b]: rollout b cuts to a new scene (a RoPE Cut, with a flush). Before the first block
    there is nothing to flush or cut.
    """
    if len(changed) != cache.batch or len(cut) != cache.batch:
        raise ValueError(f"{len(changed)} prompt changes and {len(cut)} cuts for {cache.batch} rollouts")
    cuts = tuple(bool(c) and start > 0 for c in cut)
    flushed = tuple(
        c or (bool(p) and config.flush_on_prompt_change and start > 0)
        for p, c in zip(changed, cuts, strict=True)
    )
    fresh = [b for b, c in enumerate(cuts) if c and not config.cut_keeps_sink]
    cache.clear(fresh)  # a fresh window: the cut block's first frame becomes the new sink
    cache.flush(config.flush_keep_frames, [b for b, f in enumerate(flushed) if f and b not in fresh])
    positions = [
        block_positions(config, held, start, cut=c and config.cut_keeps_sink)
        for held, c in zip(cache.held, cuts, strict=True)
    ]
    return BlockWindow(
        start=start,
        frames=config.block_frames,
        positions=cache.pad_positions(positions),
        past=cache.layers(),
        key_mask=cache.key_mask(config.block_frames),
        flushed=flushed,
        cut=cuts,
    )


def close_block(
    model: CausalWanTransformer,
    cache: KVCache,
    window: BlockWindow,
    context: Tensor,
    timestep: Tensor,
    text: TextContext,
) -> None:
    """Step 3 of a block: the context pass over the finished block; its keys/values go into the cache."""
    _, block_kv = window.predict(model, context, timestep, text)
    cache.commit(block_kv, list(range(window.start, window.start + window.frames)))
