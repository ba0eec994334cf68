"""The tiny world model's data: episodes of the procedural world, and the latent data set made from them.

An episode is a walk through the procedural world with random actions, light changes and cuts at
block borders, each block with its text prompt. The latent data set encodes a run's episodes once
with the run's VAE encoder (after a warm-up walk, so the codes are those of an endless stream) and
is cached in the run folder, keyed by the encoder's weights and the settings that play the walks.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from envs.procedural.world import ACTIONS, BIOMES, CONDITIONS, ProceduralWorld, WorldConfig, prompt_for
from envs.tiny.config import CLIP_BLOCK_FRAMES, TrainConfig
from models.streaming_vae import from_uint8_frames, use_stock_convolutions
from worldsim.config import PRESETS, EngineConfig


def per_model_block(prompts: Sequence[str], cuts: Sequence[bool], block_frames: int) -> tuple[list, list]:
    """A clip's prompts and cuts, given per clip block, as one entry per model block of `block_frames`."""
    repeat = CLIP_BLOCK_FRAMES // block_frames
    expanded_cuts = [bool(cut) and i == 0 for cut in cuts for i in range(repeat)]  # a cut starts its block
    return [p for p in prompts for _ in range(repeat)], expanded_cuts


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


def dataset_episodes(config: TrainConfig, progress: str = "") -> Iterator[Episode]:
    """The data set's episodes in order, played again from the run seed (the same walks every time).

    With `progress`, a progress bar of that name counts them.
    """
    engine = PRESETS["tiny"].engine
    rng = np.random.default_rng([config.seed, 2])
    episodes = (
        make_episode(
            rng,
            config,
            config.clip_blocks,
            engine,
            config.dataset_warmup_latents,
            config.dataset_settled_switches,
        )
        for _ in range(config.dataset_clips)
    )
    yield from (
        tqdm(episodes, total=config.dataset_clips, desc=progress, unit="clip") if progress else episodes
    )


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
            clips = from_uint8_frames(np.stack([job[2] for job in group])).to(parameter.device)
            means = vae.encode(clips.to(parameter.dtype)).latent_dist.mean.float().cpu()
            for (index, start, _, drop), mean in zip(group, means, strict=True):
                code = codes[index]
                if code is None:
                    total = (len(episodes[index].frames) - 1) // 4 + 1
                    code = codes[index] = mean.new_zeros(mean.shape[0], total, *mean.shape[2:])
                code[:, start : start + mean.shape[1] - drop] = mean[:, drop:]
    return torch.stack([c for c in codes if c is not None])  # every episode has a job from latent 0


def build_dataset(
    config: TrainConfig, run: Path, vae: AutoencoderKLWan
) -> tuple[Tensor, list[dict[str, Any]], list[float], list[float]]:
    """Encode `dataset_clips` episodes to normalised latents (cached in the run folder).

    Each clip is encoded after ``dataset_warmup_latents`` latent frames of the same walk, which are then
    dropped: a causal encoder codes the first frames of a video differently from the rest, and a rollout
    is an endless stream. With ``dataset_settled_switches``, the stretch after each prompt switch or cut
    is encoded after a warm-up walk of its own under the new prompt (``Episode.pasts``,
    :func:`encode_episodes`), so that its codes hold nothing of the old prompt (the README says why).

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
