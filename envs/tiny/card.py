"""The bundle's model card: a training run's facts rendered into ``card_template.md``.

``model_card`` gathers the values the template names (the run's config, the architecture, each
stage's checkpointed steps and minutes, the last logged losses) and renders it. The phrases that
depend on how a stage ran (trained, reused, skipped) are the small templates of ``STAGE_TEXT``.
``worldsim eval --write-card`` later fills the evaluation section, between ``EVAL_MARKERS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from envs.tiny.config import TrainConfig, bundle_engine
from envs.tiny.stages import last_records, load_checkpoint
from worldsim.config import PRESETS

CARD_FILE = "MODEL_CARD.md"
EVAL_MARKERS = ("<!-- eval:start -->", "<!-- eval:end -->")
TEMPLATE = Path(__file__).with_name("card_template.md")
WHITENING_FILE = "text_whitening.safetensors"

STAGE_TEXT = {
    "vae_reused": "reused from `{config.vae_from}` (not trained in this run)",
    "vae": "{run_vae[steps]} steps, batch {config.vae_batch}, L1 + MSE + {config.vae_edge_weight:g} edge L1 "
    "+ {config.vae_kl_weight:g} KL; last PSNR {run_vae[psnr]:.1f} dB; {run_vae[minutes]:.0f} min recorded",
    "decoder_skipped": "none",
    "decoder": "{run_decoder[steps]} steps, batch {config.vae_batch}, lr {config.decoder_lr:g}: the data "
    "set's codes, {config.decoder_clip_latents} latent frames decoded from a fresh cache, as in a rollout; "
    "{decoder_weights}encoder frozen; last PSNR {run_decoder[psnr]:.1f} dB; "
    "{run_decoder[minutes]:.0f} min recorded",
    "transformer_reused": "reused from `{config.transformer_from}` (not trained in this run)",
    "transformer": "{run_transformer[steps]} steps, batch {config.batch}, lr {config.lr:g}, "
    "EMA {config.ema_decay}, empty prompt on {config.text_dropout:.0%} of blocks, own estimate as context "
    "on {config.self_context:.0%}; prompt switches and cuts weighted {config.switch_weight:g}; "
    "last loss {run_transformer[loss]:.4f}; {run_transformer[minutes]:.0f} min recorded",
}


def model_card(
    config: TrainConfig, run: Path, transformer: WanTransformer3DModel, vae: AutoencoderKLWan
) -> str:
    """The bundle's model card; the evaluation section stays empty until `worldsim eval --write-card`."""
    engine = bundle_engine(config)
    last = last_records(run)
    values: dict[str, Any] = {
        "config": config,
        "engine": engine,
        "vae": vae,
        "arch": PRESETS["tiny"].transformer,
    }
    for stage in ("vae", "decoder", "transformer"):
        state = load_checkpoint(run / f"{stage}.ckpt") or {}
        record = last.get(stage, {})
        values[f"run_{stage}"] = {
            "steps": state.get("step", 0),
            "minutes": state.get("seconds", 0.0) / 60,
            "psnr": record.get("psnr", float("nan")),
            "loss": record.get("loss", float("nan")),
        }
    weights = (
        [f"texture loss weighted {config.decoder_texture_weight:g}; "]
        if config.decoder_texture_weight
        else []
    )
    if config.decoder_switch_weight != 1:
        weights.append(f"frames of prompt switches and cuts weighted {config.decoder_switch_weight:g}; ")
    values["decoder_weights"] = "".join(weights)
    cut_first, cut_last = engine.kept_frames + engine.cut_delta, engine.window_frames - 1 + engine.cut_delta
    texts = {
        "vae_training": STAGE_TEXT["vae_reused" if config.vae_from else "vae"],
        "decoder_tuning": STAGE_TEXT["decoder" if config.decoder_steps else "decoder_skipped"],
        "transformer_training": STAGE_TEXT[
            "transformer_reused" if config.transformer_from and not config.steps else "transformer"
        ],
    }
    values |= {name: text.format(**values) for name, text in texts.items()}
    values |= {
        "text": f"whitened against the training prompts (`{WHITENING_FILE}`), "
        if config.text_whitening
        else "",
        "dit_millions": sum(p.numel() for p in transformer.parameters()) / 1e6,
        "vae_millions": sum(p.numel() for p in vae.parameters()) / 1e6,
        "settled": ", and each stretch after a prompt switch or cut after a warm-up walk of its own "
        "under the new prompt"
        if config.dataset_settled_switches
        else "",
        "guidance": f"guidance {config.guidance_scale:g} against the empty prompt"
        if config.guidance_scale > 1
        else "no guidance",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "block_size": f"{engine.block_frames} latent frame{'s' if engine.block_frames > 1 else ''}",
        "video_frames": engine.block_frames * 4,
        "last_position": engine.window_frames - 1,
        "cut_span": f"{cut_first}" if cut_first == cut_last else f"{cut_first}-{cut_last}",
        "eval_start": EVAL_MARKERS[0],
        "eval_end": EVAL_MARKERS[1],
    }
    return TEMPLATE.read_text().format(**values)
