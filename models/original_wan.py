"""The original-format Wan2.1-T2V files users hold, read into diffusers' and transformers' classes.

Every setup script of the Self-Forcing family downloads ``Wan2.1-T2V-1.3B`` in Wan's own format:

- ``config.json`` (``_class_name: WanModel``: dim, ffn_dim, freq_dim, in_dim, num_heads, num_layers,
  out_dim, eps, model_type, text_len) with ``diffusion_pytorch_model.safetensors`` (or shards and
  their ``.index.json``) in Wan's parameter names: read into ``WanTransformer3DModel`` by
  ``models.checkpoint``'s name table;
- ``Wan2.1_VAE.pth``: a plain state dict of Wan's ``WanVAE``, converted to ``AutoencoderKLWan`` with
  the renames diffusers' own conversion uses (``convert_vae_state_dict``), its sizes read off the
  tensor shapes (``vae_config_from_shapes``);
- ``models_t5_umt5-xxl-enc-bf16.pth``: Wan's own UMT5-XXL encoder, converted to transformers'
  ``UMT5EncoderModel`` (``convert_t5_state_dict``), run in float32 as Wan runs it;
- ``google/umt5-xxl/``: the tokenizer.

Every key is mapped or named in the error; pickles are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import Tensor

from models.checkpoint import (
    CheckpointError,
    convert_original_state_dict,
    load_tensor_file,
    read_folder_weights,
    require_finite,
    strip_wrapper_prefixes,
)

CONFIG_FILE = "config.json"
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_FOLDER = "google/umt5-xxl"
ORIGINAL_CLASS = "WanModel"

# Wan2.1's published latent statistics (per channel of its 16), the same in diffusers' VAE config.
WAN_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The transformer: config.json in Wan's keys
# ---------------------------------------------------------------------------------------------


def is_original_folder(folder: Path) -> bool:
    """Whether `folder` holds Wan's own config.json (a WanModel)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("_class_name") == ORIGINAL_CLASS


def transformer_config(
    config: Mapping[str, Any], weights: Mapping[str, Tensor], where: str
) -> dict[str, Any]:
    """``WanTransformer3DModel`` arguments from Wan's config.json and the weights' shapes.

    Wan does not write text_dim and patch_size (fixed in its class): they are read off
    ``text_embedding.0.weight`` and ``patch_embedding.weight``. Only text-to-video models are taken.
    """
    model_type = config.get("model_type", "t2v")
    if model_type != "t2v":
        raise CheckpointError(
            f"{where} describes a Wan2.1 {model_type!r} model (image-to-video or other); "
            "worldsim runs the text-to-video model (model_type 't2v')"
        )
    needed = ("dim", "ffn_dim", "freq_dim", "in_dim", "num_heads", "num_layers", "out_dim")
    missing = [
        key for key in needed if not isinstance(config.get(key), int) or isinstance(config.get(key), bool)
    ]
    if missing:
        raise CheckpointError(f"{where} lacks whole-number {', '.join(missing)}")
    dim, heads = config["dim"], config["num_heads"]
    if dim % heads:
        raise CheckpointError(f"{where}: dim {dim} does not split into {heads} heads")
    text = weights.get("text_embedding.0.weight")
    patch = weights.get("patch_embedding.weight")
    if text is None or patch is None:
        raise CheckpointError(f"{where}: the weights lack text_embedding.0.weight or patch_embedding.weight")
    return {
        "patch_size": tuple(int(p) for p in patch.shape[2:]),
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": config["in_dim"],
        "out_channels": config["out_dim"],
        "text_dim": int(text.shape[1]),
        "freq_dim": config["freq_dim"],
        "ffn_dim": config["ffn_dim"],
        "num_layers": config["num_layers"],
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": float(config.get("eps", 1e-6)),
    }


def load_original_transformer(folder: Path) -> WanTransformer3DModel:
    """The transformer of an original Wan2.1 folder (config.json and weights in Wan's names), float32."""
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    weights = strip_wrapper_prefixes(read_folder_weights(folder))
    require_finite(weights, f"weights in {folder}")
    model = WanTransformer3DModel(**transformer_config(config, weights, str(path)))
    reference = {name: tensor.shape for name, tensor in model.state_dict().items()}
    try:
        converted = convert_original_state_dict(weights, reference)
    except CheckpointError as err:
        raise CheckpointError(f"weights in {folder}: {err}") from err
    model.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The VAE: Wan2.1_VAE.pth -> AutoencoderKLWan
# ---------------------------------------------------------------------------------------------

# Inside a residual block: Wan's Sequential indices -> diffusers' names.
_RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.2": "conv1", "residual.3.gamma": "norm2.gamma",
             "residual.6": "conv2", "shortcut": "conv_shortcut"}  # fmt: skip
_TOP = {"conv1": "quant_conv", "conv2": "post_quant_conv"}
_PART = {"conv1": "conv_in", "head.0.gamma": "norm_out.gamma", "head.2": "conv_out"}


def _rename_inner(rest: str) -> str | None:
    """A residual block's parameter (e.g. 'residual.2.weight') in diffusers' names, or None."""
    for original, target in _RESIDUAL.items():
        if rest == original or rest.startswith(original + "."):
            return target + rest[len(original) :]
    return None


def vae_config_from_shapes(state: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """``AutoencoderKLWan`` arguments read off a Wan VAE state dict's names and shapes."""
    try:
        base_dim = int(state["encoder.conv1.weight"].shape[0])
        z_dim = int(state["conv2.weight"].shape[0])
    except KeyError as err:
        raise CheckpointError(f"{where} is not a Wan VAE state dict (no {err.args[0]})") from None
    entries = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
    levels: list[list[int]] = [[]]
    downsample_in_time = []
    for index in entries:
        if f"encoder.downsamples.{index}.resample.1.weight" in state:
            downsample_in_time.append(f"encoder.downsamples.{index}.time_conv.weight" in state)
            levels.append([])
        else:
            levels[-1].append(index)
    if not levels[0] or any(len(level) != len(levels[0]) for level in levels):
        raise CheckpointError(
            f"{where}: the encoder's residual blocks are not the same number on every level"
        )
    dim_mult = [
        int(state[f"encoder.downsamples.{level[0]}.residual.2.weight"].shape[0]) // base_dim
        for level in levels
    ]
    return {
        "base_dim": base_dim,
        "z_dim": z_dim,
        "dim_mult": dim_mult,
        "num_res_blocks": len(levels[0]),
        "attn_scales": [],
        "temperal_downsample": downsample_in_time,
    }


def convert_vae_state_dict(state: Mapping[str, Tensor], num_res_blocks: int) -> dict[str, Tensor]:
    """A Wan VAE state dict in diffusers' ``AutoencoderKLWan`` names (the renames of diffusers' conversion).

    Unknown names are kept as they are, so the strict load that follows names them.
    """
    per_level = num_res_blocks + 2  # the decoder's flat list: num_res_blocks + 1 residuals, then a resample
    converted: dict[str, Tensor] = {}
    for name, tensor in state.items():
        converted[_vae_name(name, per_level)] = tensor
    return converted


def _vae_name(name: str, per_level: int) -> str:
    part, _, rest = name.partition(".")
    if part in _TOP and rest in ("weight", "bias"):
        return f"{_TOP[part]}.{rest}"
    if part not in ("encoder", "decoder"):
        return name
    for original, target in _PART.items():
        if rest == original or rest.startswith(original + "."):
            return f"{part}.{target}{rest[len(original) :]}"
    match = re.match(r"middle\.(\d)\.(.+)", rest)
    if match:
        index, inner = int(match.group(1)), match.group(2)
        if index == 1:
            return f"{part}.mid_block.attentions.0.{inner}"
        renamed = _rename_inner(inner)
        return f"{part}.mid_block.resnets.{index // 2}.{renamed or inner}"
    match = re.match(r"downsamples\.(\d+)\.(.+)", rest)
    if match and part == "encoder":
        inner = match.group(2)
        return f"encoder.down_blocks.{match.group(1)}.{_rename_inner(inner) or inner}"
    match = re.match(r"upsamples\.(\d+)\.(.+)", rest)
    if match and part == "decoder":
        index, inner = int(match.group(1)), match.group(2)
        level, offset = divmod(index, per_level)
        if offset == per_level - 1:  # the resample closing a level
            return f"decoder.up_blocks.{level}.upsamplers.0.{inner}"
        return f"decoder.up_blocks.{level}.resnets.{offset}.{_rename_inner(inner) or inner}"
    return name


def load_original_vae(path: Path) -> AutoencoderKLWan:
    """``AutoencoderKLWan`` from Wan's ``Wan2.1_VAE.pth``, every key and shape checked, float32."""
    state = load_tensor_file(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    require_finite(state, str(path))
    config = vae_config_from_shapes(state, str(path))
    z_dim = config["z_dim"]
    # Wan's statistics for its 16 channels; a VAE of another width has none published
    mean, std = (WAN_LATENTS_MEAN, WAN_LATENTS_STD) if z_dim == 16 else ((0.0,) * z_dim, (1.0,) * z_dim)
    vae = AutoencoderKLWan(**config, latents_mean=list(mean), latents_std=list(std))
    converted = convert_vae_state_dict(state, config["num_res_blocks"])
    _load_strict(vae, converted, str(path))
    return vae.eval()


def _load_strict(module: torch.nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Load a renamed state dict, naming every key it lacks, does not use, or holds in another shape."""
    reference = module.state_dict()
    unexpected = sorted(set(state) - set(reference))
    missing = sorted(set(reference) - set(state))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(reference[k].shape)}"
        for k in sorted(set(state) & set(reference))
        if state[k].shape != reference[k].shape
    ]
    problems = []
    for label, items in (("unexpected", unexpected), ("missing", missing), ("shape mismatches", mismatched)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... and {len(items) - 5} more" if len(items) > 5 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise CheckpointError(f"{where} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


# ---------------------------------------------------------------------------------------------
# The text encoder: Wan's T5 -> transformers' UMT5EncoderModel
# ---------------------------------------------------------------------------------------------

_T5_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the branch through the GELU
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # the linear branch it multiplies
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def convert_t5_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Wan's T5 encoder names -> ``UMT5EncoderModel``'s; CheckpointError naming any other key."""
    converted: dict[str, Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if name == "token_embedding.weight":
            converted["shared.weight"] = converted["encoder.embed_tokens.weight"] = tensor
        elif name == "norm.weight":
            converted["encoder.final_layer_norm.weight"] = tensor
        elif match and match.group(2) in _T5_BLOCK:
            converted[f"encoder.block.{match.group(1)}.{_T5_BLOCK[match.group(2)]}"] = tensor
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise CheckpointError(f"not Wan's T5 encoder: {len(unknown)} unknown keys, e.g. {shown}")
    return converted


def umt5_config_from_shapes(state: Mapping[str, Tensor], where: str) -> Any:
    """A ``UMT5Config`` read off Wan T5 weights (umt5-xxl: 24 layers, 64 heads x 64, d_ff 10240)."""
    from transformers import UMT5Config

    try:
        vocab, d_model = state["token_embedding.weight"].shape
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        inner = state["blocks.0.attn.q.weight"].shape[0]
        d_ff = state["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"{where} is not Wan's T5 encoder (no {err.args[0]})") from None
    layers = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    return UMT5Config(
        vocab_size=int(vocab), d_model=int(d_model), d_kv=int(inner) // int(heads), d_ff=int(d_ff),
        num_layers=layers, num_heads=int(heads), relative_attention_num_buckets=int(buckets),
        relative_attention_max_distance=128, dense_act_fn="gelu_new", feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
        tie_word_embeddings=False,
    )  # fmt: skip


def load_original_umt5(path: Path) -> Any:
    """``UMT5EncoderModel`` from Wan's T5 file, every key and shape checked, in float32 (as Wan runs it)."""
    from transformers import UMT5EncoderModel

    state = load_tensor_file(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    require_finite(state, str(path))
    try:
        converted = convert_t5_state_dict(state)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    model = UMT5EncoderModel(umt5_config_from_shapes(state, str(path)))
    _load_strict(model, converted, str(path))
    return model.eval()
