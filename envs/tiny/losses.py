"""What each stage of the tiny world model minimises.

- the VAE and the decoder: ``reconstruction_loss`` (L1 + MSE + an edge term) and, for the decoder,
  ``texture_loss``; each frame may be weighted (``frame_mean``), to count prompt switches more;
- the transformer: ``rollout_loss``, flow matching on clips rolled out block by block through the
  KV cache with ``worldsim.rollout``'s own steps (``training_rollout``), so the flushes, cuts and
  positions it trains on are exactly those of inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from envs.tiny.data import per_model_block
from models.causal_wan import CausalWanTransformer, TextContext
from worldsim.cache import KVCache
from worldsim.config import EngineConfig
from worldsim.rollout import BlockWindow, close_block, open_block
from worldsim.sampler import renoise, shift_sigma

# ---------------------------------------------------------------------------------------------
# Pixels: the VAE and its decoder
# ---------------------------------------------------------------------------------------------


def frame_mean(error: Tensor, frame_weights: Tensor | None) -> Tensor:
    """Mean of a (B, C, T, ...) error, each frame counted by its weight in ``frame_weights`` (B, T)."""
    if frame_weights is None:
        return error.mean()
    batch, _, frames = error.shape[:3]
    weights = frame_weights.to(error).view(batch, 1, frames, *[1] * (error.dim() - 3)).expand_as(error)
    return (error * weights).sum() / weights.sum()


def edge_loss(recon: Tensor, video: Tensor, frame_weights: Tensor | None = None) -> Tensor:
    """Mean absolute difference of horizontal and vertical pixel gradients of (B, C, T, H, W) videos.

    Pixel losses alone let a small decoder settle on blurred edges; this term prices the lost edges directly.
    """
    loss = recon.new_zeros(())
    for dim in (-1, -2):
        loss = loss + frame_mean((recon.diff(dim=dim) - video.diff(dim=dim)).abs(), frame_weights)
    return loss


TEXTURE_PATCH = 8  # pixels; the side of the patches whose statistics texture_loss matches


def texture_loss(
    recon: Tensor, video: Tensor, patch: int = TEXTURE_PATCH, frame_weights: Tensor | None = None
) -> Tensor:
    """L1 between the local texture statistics of two (B, C, T, H, W) videos, patch by patch.

    For every ``patch`` x ``patch`` square of every frame and channel: the standard deviation of the
    pixels (local contrast) and the mean absolute horizontal and vertical gradient (edge strength).
    Unlike a pixel loss, these statistics are met by texture of the right strength even where its exact
    placement is uncertain, where a pixel loss prefers a flat average.
    """

    def statistics(x: Tensor) -> Tensor:
        frames = x.transpose(1, 2).flatten(0, 1)  # (B T, C, H, W)
        mean = F.avg_pool2d(frames, patch)
        std = (F.avg_pool2d(frames.square(), patch) - mean.square()).clamp_min(1e-6).sqrt()
        # gradients padded back to the frame's size with zeros, the same for both videos
        dx = F.avg_pool2d(F.pad(frames.diff(dim=-1).abs(), (0, 1)), patch)
        dy = F.avg_pool2d(F.pad(frames.diff(dim=-2).abs(), (0, 0, 0, 1)), patch)
        return torch.cat([std, dx, dy], dim=1)

    batch, _, frames = recon.shape[:3]
    error = (statistics(recon) - statistics(video)).abs()  # (B T, 3 C, h, w)
    return frame_mean(error.unflatten(0, (batch, frames)).transpose(1, 2), frame_weights)


def reconstruction_loss(
    recon: Tensor, video: Tensor, edge_weight: float, frame_weights: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, L1, MSE) of a decoded video against the real one: L1 + MSE + ``edge_weight`` edge L1.

    The loss counts each frame by its weight in ``frame_weights`` (B, T); L1 and MSE are plain means.
    """
    error = recon - video
    l1, mse = error.abs().mean(), error.square().mean()
    pixel = l1 + mse
    if frame_weights is not None:
        pixel = frame_mean(error.abs(), frame_weights) + frame_mean(error.square(), frame_weights)
    return pixel + edge_weight * edge_loss(recon, video, frame_weights), l1, mse


def decoder_frame_weights(clips: Sequence[dict[str, Any]], first: int, latents: int, weight: float) -> Tensor:
    """Loss weights (B, T) of the video frames decoded from latent frames first .. first + latents - 1.

    ``weight`` for the frames of a latent frame that begins a block with a new prompt or a cut (the
    first decoded latent frame stands for one video frame, every later one for four), 1 elsewhere.
    """
    per_latent = [per_model_block(clip["prompts"], clip["cuts"], 1) for clip in clips]
    rows = switch_weights([p for p, _ in per_latent], [c for _, c in per_latent], weight)
    rows = rows[:, first : first + latents]
    return torch.cat([rows[:, :1], rows[:, 1:].repeat_interleave(4, dim=1)], dim=1)


# ---------------------------------------------------------------------------------------------
# Latents: the transformer, rolled out through the KV cache
# ---------------------------------------------------------------------------------------------


def switch_weights(prompts: Sequence[Sequence[str]], cuts: Sequence[Sequence[bool]], weight: float) -> Tensor:
    """Loss weights (B, blocks): ``weight`` for a block that changes prompt or follows a cut, else 1."""
    rows = [
        [weight if k > 0 and (p[k] != p[k - 1] or c[k]) else 1.0 for k in range(len(p))]
        for p, c in zip(prompts, cuts, strict=True)
    ]
    return torch.tensor(rows)


def prompt_changes(prompts: Sequence[Sequence[str]]) -> list[list[bool]]:
    """Per clip and block: whether the block's prompt differs from the block's before it (a KV Flush)."""
    return [[k > 0 and p[k] != p[k - 1] for k in range(len(p))] for p in prompts]


@dataclass(frozen=True)
class RolledBlock:
    """One block of a training rollout, after its keys/values went into the cache."""

    clean: Tensor  # (B, C, n, h, w) the block's latents
    sigma: Tensor  # (B,) the noise level it was scored at
    eps: Tensor  # (B, C, n, h, w) the noise
    noisy: Tensor  # (1 - sigma) clean + sigma eps
    flow: Tensor  # the model's prediction at the noisy block
    window: BlockWindow  # what the block attended to
    cache: KVCache  # the cache, with the block committed

    @property
    def estimate(self) -> Tensor:
        """The model's clean block, x0 = x_t - sigma v (what the sampler makes of a step)."""
        return self.noisy - self.sigma.view(-1, 1, 1, 1, 1) * self.flow


@dataclass(frozen=True)
class Clips:
    """A batch of training clips, and per block the text it runs under and the events before it."""

    latents: Tensor  # (B, C, F, h, w) clean normalised latents
    text_states: Tensor  # (B, blocks, L, dim) text-encoder states of each block's prompt
    changed: Sequence[Sequence[bool]]  # changed[b][k]: block k of clip b follows a prompt change
    cuts: Sequence[Sequence[bool]]  # cuts[b][k]: block k of clip b follows a RoPE Cut


NoiseFn = Callable[[Tensor], tuple[Tensor, Tensor]]  # clean block -> (sigma (B,), eps)
ContextFn = Callable[[Tensor, TextContext, BlockWindow], Tensor]  # clean block -> what the cache keeps


def training_rollout(
    model: CausalWanTransformer,
    clips: Clips,
    engine: EngineConfig,
    noise: NoiseFn,
    context: ContextFn | None = None,
    context_generator: torch.Generator | None = None,
) -> Iterator[RolledBlock]:
    """A batch of clips rolled out block by block as a session would roll them out.

    Each block is opened (flush, cut, positions: ``worldsim.rollout.open_block``), noised by `noise`,
    scored by the model against the window, and closed with the context `context` gives (default: the
    clean block) noised to ``engine.context_noise`` (drawn from `context_generator`) at that timestep,
    exactly as ``Session.step`` closes a block.
    """
    batch, _, frames, _, _ = clips.latents.shape
    n = engine.block_frames
    cache = KVCache(model.num_layers, engine.kept_frames, engine.sink_frames, batch)
    zero = torch.zeros(batch, device=clips.latents.device)
    for block in range(frames // n):
        start = block * n
        clean = clips.latents[:, :, start : start + n]
        text = model.encode_text(clips.text_states[:, block])
        changed, cuts = [c[block] for c in clips.changed], [c[block] for c in clips.cuts]
        window = open_block(cache, engine, start, changed, cuts)
        sigma, eps = noise(clean)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * clean + s * eps
        flow, _ = window.predict(model, noisy, 1000 * sigma, text)
        kept = clean if context is None else context(clean, text, window)
        kept = renoise(kept, engine.context_noise, context_generator)
        close_block(model, cache, window, kept, zero + engine.context_noise, text)
        yield RolledBlock(clean, sigma, eps, noisy, flow, window, cache)


def training_noise(
    generator: torch.Generator, sigma_choices: Tensor, sampler_share: float, shift: float
) -> NoiseFn:
    """Noise levels for training: ``sampler_share`` of them the sampler's own, the rest any shifted level."""

    def draw(clean: Tensor) -> tuple[Tensor, Tensor]:
        batch = clean.shape[0]
        pick = torch.randint(len(sigma_choices), (batch,), generator=generator)
        warped = shift_sigma(torch.rand(batch, generator=generator), shift)
        use_sampler = torch.rand(batch, generator=generator) < sampler_share
        sigma = torch.where(use_sampler, sigma_choices[pick], warped).to(clean.device)
        eps = torch.randn(clean.shape, generator=generator).to(clean.device)
        return sigma, eps

    return draw


def rollout_loss(
    model: CausalWanTransformer,
    clips: Clips,
    engine: EngineConfig,
    sigma_choices: Tensor,
    sampler_share: float,
    generator: torch.Generator,
    self_context: float = 0.0,
    weights: Tensor | None = None,
) -> Tensor:
    """Flow-matching loss of a batch of clips rolled out block by block through the KV cache.

    With ``self_context`` > 0, that share of the blocks enters the cache as the model's own prediction
    of it (:func:`own_prediction`) instead of the clean latents. ``weights`` (B, blocks), if given,
    weighs each block's loss; the result is the weighted mean, so all-equal weights give the plain mean.
    """
    noise = training_noise(generator, sigma_choices, sampler_share, engine.shift)
    context: ContextFn | None = None
    if self_context > 0:

        def context(clean: Tensor, text: TextContext, window: BlockWindow) -> Tensor:
            return own_prediction(model, clean, text, window, sigma_choices[-1], self_context, generator)

    losses = [  # per block, (B,)
        (block.flow.float() - (block.eps - block.clean)).square().mean(dim=(1, 2, 3, 4))
        for block in training_rollout(model, clips, engine, noise, context, generator)
    ]
    per_block = torch.stack(losses, dim=1)  # (B, blocks)
    if weights is None:
        return per_block.mean()
    weights = weights.to(per_block)
    return (per_block * weights).sum() / weights.sum()


def own_prediction(
    model: CausalWanTransformer,
    clean: Tensor,
    text: TextContext,
    window: BlockWindow,
    last_sigma: Tensor,
    share: float,
    generator: torch.Generator,
) -> Tensor:
    """The context a block leaves in the cache: for ``share`` of the clips, the model's own estimate of it.

    At inference every cached block is the model's last denoising estimate, made from noise level
    ``last_sigma``, never the real latents; a model trained only on real context drifts once it sees its
    own smoother output. So the block is noised to a level drawn uniformly from ``[0, 2 * last_sigma]``
    (mean: the sampler's last level) and denoised in one step by the current weights, without gradient.
    """
    batch = clean.shape[0]
    with torch.no_grad():
        sigma = (2 * last_sigma * torch.rand(batch, generator=generator)).to(clean.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * clean + s * torch.randn(clean.shape, generator=generator).to(clean.device)
        flow, _ = window.predict(model, noisy, 1000 * sigma, text)
        estimate = (noisy - s * flow).to(clean.dtype)
    mine = (torch.rand(batch, generator=generator) < share).to(clean.device).view(-1, 1, 1, 1, 1)
    return torch.where(mine, estimate, clean)
