"""`worldsim train`: the built-in tiny world model, trained on the procedural world.

Stages, each a ``envs.tiny.stages.Stage`` run by the one loop ``train_component`` and resumable
from its own checkpoint in the run folder, then the bundle:

1. **VAE.** A small ``AutoencoderKLWan`` (the same class as Wan's) learns 64x64 frames <-> 16x16x16
   latents on short clips with motion, light changes and scene cuts.
2. **Latent data set** (``envs.tiny.data``): the run's episodes, encoded once.
3. **Decoder.** The VAE's decoder alone, on the data set's codes decoded from a cold start, as a
   rollout decodes them (the encoder, and so the data set, stay as they are).
4. **Transformer.** A ``WanTransformer3DModel`` conditioned on frozen all-MiniLM-L6-v2 token states
   learns flow matching on latent clips rolled out block by block through the engine's own
   ``worldsim.rollout`` steps (``envs.tiny.losses.rollout_loss``).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import Tensor

from envs.procedural.world import SCENARIO_PATH
from envs.tiny.card import CARD_FILE, WHITENING_FILE, model_card
from envs.tiny.config import TrainConfig, bundle_engine
from envs.tiny.data import build_dataset, dataset_episodes, make_episode, per_model_block
from envs.tiny.losses import (
    Clips,
    decoder_frame_weights,
    prompt_changes,
    reconstruction_loss,
    rollout_loss,
    switch_weights,
    texture_loss,
)
from envs.tiny.stages import Stage, train_component, trainable
from models.causal_wan import CausalWanTransformer
from models.checkpoint import load_diffusers_transformer
from models.streaming_vae import from_uint8_frames, use_frame_convolutions
from models.text import MiniLMTextEncoder, Whitening
from worldsim.bundle import load_vae_folder, save_bundle
from worldsim.config import PRESETS, EngineConfig
from worldsim.device import use_threads

VAE_WARMUP_STEPS = 50  # learning-rate warm-up of the VAE and decoder stages


def train(config: TrainConfig) -> Path:
    """Run (or resume) every stage and write the bundle; returns the bundle folder."""
    if config.threads:  # 0: every core, for a long job on a machine of its own
        use_threads(config.threads)
    run = Path(config.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    started = time.time()
    vae = train_vae(config, run)
    latents, clips, mean, std = build_dataset(config, run, vae)
    vae = tune_decoder(config, run, vae, latents, clips, mean, std)
    transformer = train_transformer(config, run, latents, clips)
    bundle = export_bundle(config, run, transformer, vae, mean, std, bundle_engine(config))
    print(f"bundle written to {bundle} ({time.time() - started:.0f} s this session)")
    return bundle


# ---------------------------------------------------------------------------------------------
# Stage 1: the VAE
# ---------------------------------------------------------------------------------------------


def train_vae(config: TrainConfig, run: Path) -> AutoencoderKLWan:
    """Train (or resume, or load the finished, or copy `vae_from`) the tiny VAE."""
    if config.vae_clip_frames < 1 or (config.vae_clip_frames - 1) % 4:
        raise ValueError(f"vae_clip_frames must be 1 + a multiple of 4, got {config.vae_clip_frames}")
    final = run / "vae"
    if config.vae_from:  # copied into the run folder once, so the run stays whole if the source changes
        if (run / "vae.ckpt").is_file():
            raise ValueError(
                f"{run} trained a VAE of its own ({run / 'vae.ckpt'}); drop --vae-from or use a new run"
            )
        vae = load_vae_folder(final if (final / "config.json").is_file() else Path(config.vae_from))
        vae.save_pretrained(final, safe_serialization=True)
        return use_frame_convolutions(vae).to(config.device).eval()
    spec = PRESETS["tiny"]
    torch.manual_seed(config.seed)
    vae = use_frame_convolutions(AutoencoderKLWan(**spec.vae)).to(config.device)  # faster on a CPU
    engine, length = spec.engine, config.vae_clip_frames
    # episodes long enough to hold a clip at any of several starts: 12 video frames a block after the first 9
    blocks = 2 + max(0, math.ceil((length - 9) / (4 * engine.block_frames)))

    def loss(step: int, rng: np.random.Generator, noise: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        episodes = [make_episode(rng, config, blocks, engine) for _ in range(config.vae_batch)]
        starts = [int(rng.integers(0, (len(e.frames) - length) // 4 + 1)) * 4 for e in episodes]
        clips = [e.frames[s : s + length] for e, s in zip(episodes, starts, strict=True)]
        video = from_uint8_frames(np.stack(clips)).to(config.device)
        posterior = vae.encode(video).latent_dist
        sample = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=noise).to(
            video.device
        )
        recon = vae.decode(sample).sample
        total, l1, mse = reconstruction_loss(recon, video, config.vae_edge_weight)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        return total + config.vae_kl_weight * kl, {"l1": l1.item(), "psnr": psnr(mse)}

    parameters = trainable([vae])
    optimizer = torch.optim.AdamW(parameters, lr=config.vae_lr, weight_decay=0.0)
    stage = Stage(
        "vae", 1, vae, parameters, optimizer, config.vae_steps, config.vae_lr, VAE_WARMUP_STEPS, loss
    )
    train_component(stage, run, config.seed, config.checkpoint_every)
    vae.eval()
    vae.save_pretrained(final, safe_serialization=True)
    return vae


def psnr(mse: Tensor) -> float:
    """Peak signal-to-noise ratio, in dB, of a mean squared error on [-1, 1] pixels."""
    return 10 * math.log10(4.0 / max(mse.item(), 1e-10))


# ---------------------------------------------------------------------------------------------
# Stage 3: the decoder, on the codes it meets in a rollout
# ---------------------------------------------------------------------------------------------


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

    Stage 1 trains on short clips coded from a video's first frame; a rollout's decoder instead starts
    cold on steady-state codes (the data set's) and runs for thousands of frames. Each step decodes
    ``decoder_clip_latents`` consecutive codes of data-set clips from a fresh cache against the frames
    they stand for (the clips' walks, played again from the run seed). The encoder is untouched, so the
    latent data set, and a transformer trained on it, stay valid.
    """
    if config.decoder_steps <= 0:
        return vae
    clip, available = config.decoder_clip_latents, latents.shape[2]
    if not 2 <= clip <= available:
        raise ValueError(f"decoder_clip_latents must be 2 to {available}, got {clip}")
    vae = copy.deepcopy(vae).requires_grad_(False)
    scale = torch.tensor(std).view(1, -1, 1, 1, 1), torch.tensor(mean).view(1, -1, 1, 1, 1)
    walks: list[np.ndarray] = []

    def replay_walks() -> None:
        # decoded first, latent frame w of a clip stands for its video frame 4 w; each later one for 4 more
        skip = 4 * config.dataset_warmup_latents
        walks.append(np.stack([e.frames[skip:] for e in dataset_episodes(config, progress="replay walks")]))

    def loss(step: int, rng: np.random.Generator, _: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        frames = walks[0]  # (N, 1 + 4 (F - 1), H, W, 3)
        index = rng.choice(len(latents), size=config.vae_batch, replace=False)
        first = int(rng.integers(0, available - clip + 1))
        codes = latents[torch.from_numpy(index), :, first : first + clip].float() * scale[0] + scale[1]
        target = from_uint8_frames(frames[index, 4 * first : 4 * first + 1 + 4 * (clip - 1)])
        recon = vae.decode(codes.to(config.device)).sample
        target = target.to(recon.device)
        weights = None
        if config.decoder_switch_weight != 1:
            weights = decoder_frame_weights(
                [clips[i] for i in index], first, clip, config.decoder_switch_weight
            )
        total, l1, mse = reconstruction_loss(recon, target, config.vae_edge_weight, weights)
        if config.decoder_texture_weight:
            total = total + config.decoder_texture_weight * texture_loss(recon, target, frame_weights=weights)
        return total, {"l1": l1.item(), "psnr": psnr(mse)}

    parameters = trainable([vae.post_quant_conv, vae.decoder])
    optimizer = torch.optim.AdamW(parameters, lr=config.decoder_lr, weight_decay=0.0)
    stage = Stage(
        "decoder", 4, vae, parameters, optimizer, config.decoder_steps, config.decoder_lr, VAE_WARMUP_STEPS,
        loss, prepare=replay_walks,
    )  # fmt: skip
    train_component(stage, run, config.seed, config.checkpoint_every)
    vae.requires_grad_(False).eval()
    vae.save_pretrained(run / "vae-decoder", safe_serialization=True)
    return vae


# ---------------------------------------------------------------------------------------------
# Stage 4: the transformer
# ---------------------------------------------------------------------------------------------


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
    spec, engine = PRESETS["tiny"], bundle_engine(config)
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

    encoder = MiniLMTextEncoder(max_length=spec.text_length)
    prompts = ["", *sorted({p for clip in clips for p in clip["prompts"]})]  # row 0: the empty prompt
    row = {p: i for i, p in enumerate(prompts)}
    table = torch.cat([encoder.encode(p) for p in prompts]).to(config.device)  # (P, L, dim)
    if config.text_whitening:
        table = text_whitening(run, table, config.text_whitening_shrinkage).apply(table)
    sigma_choices = torch.tensor(engine.schedule.sigmas)

    def loss(step: int, rng: np.random.Generator, noise: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        index = rng.choice(len(clips), size=config.batch, replace=False)
        batch_latents = latents[torch.from_numpy(index)].float().to(config.device)
        blocks = [per_model_block(clips[i]["prompts"], clips[i]["cuts"], engine.block_frames) for i in index]
        prompts_of, cuts = [p for p, _ in blocks], [c for _, c in blocks]
        text_rows = torch.tensor([[row[p] for p in block_prompts] for block_prompts in prompts_of])
        dropped = torch.from_numpy(rng.random(text_rows.shape) < config.text_dropout)
        text_states = table[text_rows.masked_fill(dropped, row[""])]  # (B, blocks, L, dim)
        weights = (
            None if config.switch_weight == 1 else switch_weights(prompts_of, cuts, config.switch_weight)
        )
        batch = Clips(batch_latents, text_states, prompt_changes(prompts_of), cuts)
        total = rollout_loss(
            model,
            batch,
            engine,
            sigma_choices,
            config.sampler_sigma_share,
            noise,
            config.self_context,
            weights,
        )
        return total, {"loss": total.item()}

    def update_ema(step: int) -> None:
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), transformer.parameters(), strict=True):
                e.lerp_(p, 1 - decay)

    parameters = list(transformer.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.01, betas=(0.9, 0.99))
    stage = Stage(
        "transformer", 3, transformer, parameters, optimizer, config.steps, config.lr, config.warmup_steps,
        loss, after_step=update_ema, extra={"ema": ema},
    )  # fmt: skip
    train_component(stage, run, config.seed, config.checkpoint_every)
    ema.eval()
    ema.save_pretrained(run / "transformer", safe_serialization=True)
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
    spec = PRESETS["tiny"]
    save_bundle(
        bundle, transformer, vae, text_spec, engine, spec.height, spec.width, name="tiny",
        latents_mean=mean, latents_std=std, scenario="scenario.toml",
    )  # fmt: skip
    shutil.copyfile(SCENARIO_PATH, bundle / "scenario.toml")
    if config.text_whitening:
        shutil.copyfile(run / WHITENING_FILE, bundle / WHITENING_FILE)
    shutil.copyfile(run / "train_config.json", bundle / "train_config.json")
    if (run / "log.jsonl").is_file():
        shutil.copyfile(run / "log.jsonl", bundle / "train_log.jsonl")
    (bundle / CARD_FILE).write_text(model_card(config, run, transformer, vae))
    return bundle
