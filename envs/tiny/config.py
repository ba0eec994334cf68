"""What a training run of the tiny world model depends on: ``TrainConfig``, one field per setting.

Each field's docstring is its ``worldsim train --help`` line (``field_help``), so a setting is
described once. ``bundle_engine`` turns a config into the engine settings its bundle ships.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
from dataclasses import dataclass
from typing import Any

from worldsim.config import PRESETS, EngineConfig

# Training clips are played in blocks of this many latent frames: prompts change and cuts happen only
# at their borders (the tiny preset's block size).
CLIP_BLOCK_FRAMES = PRESETS["tiny"].engine.block_frames


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved in the run folder and the bundle."""

    run_dir: str = "runs/tiny"
    """folder of checkpoints and the latent data set; the same command resumes from it"""
    bundle_dir: str = "runs/tiny-bundle"
    """where the finished bundle is written (models/bundles/tiny replaces the built-in one)"""
    seed: int = 0
    """seed of every random draw (episodes, noise, initial weights)"""
    device: str = "cpu"
    """cpu or cuda"""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default, every core (training is a long job for a machine of its
    own, unlike the interactive commands, which take one thread per two cores)"""
    clip_blocks: int = 4
    """blocks per training clip (12 latent frames, 45 video frames)"""
    p_action_change: float = 0.45
    """chance of a new action at each later block of a clip"""
    p_condition_change: float = 0.15
    """chance of a new light at each later block (when no cut)"""
    p_cut: float = 0.15
    """chance of a cut to another biome at each later block"""

    vae_steps: int = 1600
    """VAE training steps (stage 1)"""
    vae_batch: int = 4
    """clips per VAE step (and per decoder-tuning step)"""
    vae_clip_frames: int = 9
    """video frames per VAE clip, 1 + 4k"""
    vae_lr: float = 1e-3
    """VAE peak learning rate"""
    vae_kl_weight: float = 1e-6
    """weight of the VAE's KL term"""
    vae_edge_weight: float = 1.0
    """weight of the L1 between image gradients, against blur"""
    vae_from: str = ""
    """a trained VAE folder (diffusers layout) to use instead of stage 1"""

    decoder_steps: int = 600
    """steps tuning the decoder alone on the data set's codes, decoded from a cold start as in a rollout;
    0 skips the stage (the encoder, and so the latent data set, stay as they are)"""
    decoder_lr: float = 5e-4
    """decoder-tuning peak learning rate"""
    decoder_clip_latents: int = 8
    """latent frames decoded from a cold start per decoder-tuning clip (1 + 4 (n - 1) video frames)"""
    decoder_texture_weight: float = 1.0
    """weight of the patch texture loss in decoder tuning (a decoder trained on pixel losses alone
    averages away texture it cannot place exactly)"""
    decoder_switch_weight: float = 1.0
    """loss weight of the frames that begin a prompt switch or cut in decoder tuning"""

    dataset_clips: int = 2000
    """clips in the latent data set"""
    dataset_warmup_latents: int = 12
    """latent frames encoded before each clip and dropped (a causal encoder's codes settle only this far
    into a video, and a rollout is endless)"""
    dataset_settled_switches: bool = True
    """code each stretch after a switch or cut behind a warm-up walk of its own under the new prompt"""

    steps: int = 2000
    """transformer training steps (stage 2)"""
    batch: int = 8
    """clips per transformer step"""
    lr: float = 1e-3
    """transformer peak learning rate"""
    warmup_steps: int = 200
    """transformer learning-rate warm-up steps"""
    ema_decay: float = 0.999
    """decay of the transformer weights' moving average (the exported weights)"""
    sampler_sigma_share: float = 0.25
    """share of noise levels drawn from the sampler's own steps"""
    text_dropout: float = 0.1
    """share of blocks trained on the empty prompt (for guidance)"""
    self_context: float = 0.0
    """share of cached blocks that are the model's own one-step estimate"""
    switch_weight: float = 4.0
    """loss weight of a block that changes prompt or follows a cut"""
    qk_norm_init: float = 1.0
    """initial weight of the self-attention query/key norms (fresh transformers): logits start this
    squared times larger, so attention can copy one token of a window from the start"""
    transformer_from: str = ""
    """a trained transformer folder to fine-tune instead of random weights (its EMA starts from it too)"""
    text_whitening: bool = True
    """whiten the frozen text states against the training prompts"""
    text_whitening_shrinkage: float = 0.1
    """shrinkage of the whitening towards the identity (smaller tells prompts further apart)"""
    block_frames: int = 1
    """latent frames per generated block (engine setting; must divide the clips' blocks)"""
    window_frames: int = 4
    """latent frames the cache window holds, the block included (engine setting)"""
    sampling_steps: int = 4
    """denoising steps of the bundle's sampler (evenly spaced timesteps from 1000)"""
    sampling_shift: float = 3.0
    """flow-matching timestep shift of the bundle's sampler"""
    guidance_scale: float = 2.5
    """the bundle's classifier-free guidance against the empty prompt; 1 is off"""
    lead_in_blocks: int = 2
    """blocks a session of the bundle generates as context before the first it shows (engine setting): a
    first block made with nothing to attend to comes out in the wrong colours"""
    image_still_latents: int = 3
    """latent frames a start picture is encoded into as a still clip, the last one kept (engine setting):
    the data set's codes are those of a stream, not of a video's first frame"""
    checkpoint_every: int = 100
    """steps between checkpoints of each stage"""

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values."""
        return dataclasses.asdict(self)


def field_help(cls: type) -> dict[str, str]:
    """The docstring of every field of a dataclass, by field name (whitespace collapsed)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for statement, following in itertools.pairwise(body):
        named = isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
        if named and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[statement.target.id] = " ".join(str(following.value.value).split())  # type: ignore[union-attr]
    return docs


def bundle_engine(config: TrainConfig) -> EngineConfig:
    """The engine settings the bundle ships: the tiny preset's, with the run's blocks and sampling."""
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
        lead_in_blocks=config.lead_in_blocks,
        image_still_latents=config.image_still_latents,
    )
