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

``recache`` is the other answer to a prompt change (LongLive's, instead of a KV Flush): the held
frames' keys/values made again under the new prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from models.causal_wan import CausalWanTransformer, LayerKV, TextContext
from worldsim.cache import KVCache
from worldsim.config import EngineConfig
from worldsim.positions import block_positions


@dataclass(frozen=True)
class BlockWindow:
    """What the block being generated attends to, for every rollout of a batch."""

    starts: tuple[int, ...]  # per rollout: its rollout index of the block's first latent frame
    frames: int  # latent frames in the block
    positions: list[list[int]]  # per rollout: its held frames (padded to the cache's slots), then the block
    past: list[LayerKV] | None  # per layer the cached keys/values, (B, slots * tokens, heads, head_dim)
    key_mask: Tensor | None  # (B, (slots + frames) * tokens): which keys are real; None when all are
    flushed: tuple[bool, ...]  # per rollout: a KV Flush ran before this block (a prompt change or a cut)
    cut: tuple[bool, ...]  # per rollout: a RoPE Cut ran before this block
    held: tuple[int, ...]  # per rollout: the frames it holds in the cache (before this block)
    # per number of copies: the past, key mask and rotated past keys that the window's calls share
    _prepared: dict[int, tuple[Any, Any, Any]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def batch(self) -> int:
        """Rollouts in the batch."""
        return len(self.positions)

    def row_positions(self, row: int) -> list[int]:
        """Rollout `row`'s positions without padding: its held frames, then the block."""
        positions, held = self.positions[row], self.held[row]
        padding = len(positions) - self.frames - held
        return [*positions[:held], *positions[held + padding :]]

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
        # one rollout: one position list serves every copy
        positions = self.positions[0] if self.batch == 1 else self.positions * copies
        if torch.is_grad_enabled():  # training: every call builds its own graph from the cache
            return model(
                latents, timestep, text, positions, _copied(self.past, copies), self._key_mask(copies)
            )
        # Inference: the sampler's steps and the context pass share this window, so its past keys
        # are rotated (and copied for guidance) once, not once a call: the same bits.
        prepared = self._prepared.get(copies)
        if prepared is None:
            rotated = None
            if self.past is not None:
                own = self.positions[0] if self.batch == 1 else self.positions
                size = (latents.shape[-2], latents.shape[-1])
                rotated = [_repeat(k, copies) for k in model.rotate_past(self.past, own, size)]
            prepared = self._prepared[copies] = (_copied(self.past, copies), self._key_mask(copies), rotated)
        past, key_mask, rotated = prepared
        return model(latents, timestep, text, positions, past, key_mask, rotated_past=rotated)

    def _key_mask(self, copies: int) -> Tensor | None:
        """The key mask for `copies` copies of the batch."""
        return None if self.key_mask is None else _repeat(self.key_mask, copies)


def open_block(
    cache: KVCache,
    config: EngineConfig,
    start: int | Sequence[int],
    changed: Sequence[bool],
    cut: Sequence[bool],
) -> BlockWindow:
    """Steps 1-2 of a block: flush or cut each rollout that asks for it; the window of the block at `start`.

    start: the rollout index of the block's first frame, one for all rollouts or one per rollout
    (rollouts of a batch that started over at different times); changed[b]: rollout b's prompt
    changed before this block (a KV Flush if the engine flushes on a change); cut[b]: rollout b cuts
    to a new scene (a RoPE Cut, with a flush). Before a rollout's first block there is nothing to
    flush or cut.
    """
    starts = (start,) * cache.batch if isinstance(start, int) else tuple(start)
    if len(changed) != cache.batch or len(cut) != cache.batch or len(starts) != cache.batch:
        raise ValueError(
            f"{len(starts)} starts, {len(changed)} prompt changes and {len(cut)} cuts "
            f"for {cache.batch} rollouts"
        )
    cuts = tuple(bool(c) and s > 0 for c, s in zip(cut, starts, strict=True))
    flushed = tuple(
        c or (bool(p) and config.flush_on_prompt_change and s > 0)
        for p, c, s in zip(changed, cuts, starts, strict=True)
    )
    fresh = [b for b, c in enumerate(cuts) if c and not config.cut_keeps_sink]
    cache.clear(fresh)  # a fresh window: the cut block's first frame becomes the new sink
    cache.flush(config.flush_keep_frames, [b for b, f in enumerate(flushed) if f and b not in fresh])
    positions = [
        block_positions(config, held, s, cut=c and config.cut_keeps_sink)
        for held, s, c in zip(cache.held, starts, cuts, strict=True)
    ]
    return BlockWindow(
        starts=starts,
        frames=config.block_frames,
        positions=cache.pad_positions(positions),
        past=cache.layers(),
        key_mask=cache.key_mask(config.block_frames),
        flushed=flushed,
        cut=cuts,
        held=tuple(len(h) for h in cache.held),
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
    cache.commit(block_kv, [list(range(s, s + window.frames)) for s in window.starts], contexts=context)


def recache(
    model: CausalWanTransformer, cache: KVCache, config: EngineConfig, rows: Sequence[int], text: TextContext
) -> None:
    """LongLive's recache: the given rollouts' held frames re-encoded under their new prompt `text`.

    Instead of a KV Flush, a prompt change keeps every held frame but renews its keys/values: each
    held latent frame gets its context pass again, oldest first, attending to the frames re-encoded
    before it, at the timestep it was first encoded at (``context_noise``). Frames are re-encoded
    one at a time, so frames of one block, which saw each other when first encoded, now see only
    the earlier ones. text: one prompt per rollout of the cache.
    """
    one_frame = config.replace(block_frames=1, flush_keep_frames=0)
    for row in rows:
        latents = cache.held_contexts(row)
        if latents is None:
            continue  # nothing held (or frames committed without their latents): nothing to renew
        renewed = KVCache(cache.num_layers, cache.capacity, cache.sink_frames)
        timestep = torch.full((1,), float(config.context_noise), device=latents.device)
        for frame, index in enumerate(cache.held[row]):
            window = open_block(renewed, one_frame, index, changed=[False], cut=[False])
            close_block(
                model, renewed, window, latents[None, :, frame : frame + 1], timestep, text.rows([row])
            )
        cache.put([row], renewed)


def _copied(past: list[LayerKV] | None, copies: int) -> list[LayerKV] | None:
    """The past's rows repeated `copies` times, one copy after another."""
    if past is None or copies == 1:
        return past
    return [(_repeat(k, copies), _repeat(v, copies)) for k, v in past]


def _repeat(rows: Tensor, copies: int) -> Tensor:
    """`rows` (B, ...) repeated `copies` times along the batch; a view, no copy, for a single row."""
    if copies == 1:
        return rows
    if rows.shape[0] == 1:
        return rows.expand(copies, *rows.shape[1:])
    return rows.repeat(copies, *[1] * (rows.dim() - 1))
