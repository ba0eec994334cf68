"""LoRA adapters merged into a transformer's weights at load (LongLive's ``lora.pt``).

A LoRA adapter holds, for some linear layers, two matrices A (rank x in) and B (out x rank); the
layer's weight becomes ``W + alpha / rank * B @ A``. LongLive saves its adapter with PEFT's
``get_peft_model_state_dict`` under ``generator_lora``: keys such as
``base_model.model.blocks.0.self_attn.q.lora_A.weight`` in Wan's original names. PEFT does not
store alpha; a file may carry it per layer (``<layer>.alpha``), and otherwise alpha is the rank
(scale 1, LongLive's own setting: rank 256, alpha 256).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from torch import Tensor

from models.checkpoint import CheckpointError, load_tensor_file, original_to_diffusers_name, require_finite

_KEY = re.compile(r"(?P<layer>.+)\.(?:(?P<part>lora_[AB])(?:\.default)?\.weight|(?P<alpha>alpha))")
_WRAPPERS = ("base_model.model.", "model.", "_fsdp_wrapped_module.", "diffusion_model.")
LORA_ENTRIES = ("generator_lora", "lora")


@dataclass(frozen=True)
class LoRALayer:
    """The low-rank update of one linear layer."""

    down: Tensor  # A, (rank, in)
    up: Tensor  # B, (out, rank)
    alpha: float

    @property
    def rank(self) -> int:
        """The update's rank."""
        return int(self.down.shape[0])

    def delta(self) -> Tensor:
        """alpha / rank * B @ A, in float32."""
        return (self.alpha / self.rank) * (self.up.float() @ self.down.float())


@dataclass(frozen=True)
class LoRA:
    """An adapter's layers, by layer name as the file names them (Wan's original names, or diffusers')."""

    layers: dict[str, LoRALayer]
    alpha_in_file: bool  # the file gave alpha; otherwise alpha is the rank

    @property
    def ranks(self) -> list[int]:
        """The distinct ranks of its layers."""
        return sorted({layer.rank for layer in self.layers.values()})

    def describe(self) -> str:
        """E.g. '300 layers, rank 256, alpha 256 (not in the file: alpha = rank)'."""
        alphas = sorted({layer.alpha for layer in self.layers.values()})
        alpha = ", ".join(f"{a:g}" for a in alphas)
        source = "" if self.alpha_in_file else " (not in the file: alpha = rank)"
        return f"{len(self.layers)} layers, rank {', '.join(map(str, self.ranks))}, alpha {alpha}{source}"


def read_lora(path: str | Path) -> LoRA:
    """An adapter file (a pickle read with weights_only=True, or safetensors); CheckpointError if not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such LoRA file: {path}")
    obj = load_tensor_file(path)
    if isinstance(obj, Mapping):
        for entry in LORA_ENTRIES:
            if isinstance(obj.get(entry), Mapping):
                obj = obj[entry]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} is not a LoRA adapter (no dict of lora_A / lora_B tensors)")
    parts: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, tensor in obj.items():
        match = _KEY.fullmatch(_strip(str(key)))
        if match is None or not isinstance(tensor, Tensor):
            unknown.append(str(key))
            continue
        parts.setdefault(match.group("layer"), {})[match.group("part") or "alpha"] = tensor
    if unknown:
        raise CheckpointError(
            f"{path} is not a LoRA adapter: {len(unknown)} keys are not lora_A / lora_B / alpha, "
            f"e.g. {unknown[0]!r}"
        )
    require_finite({f"{layer}.{part}": t for layer, ts in parts.items() for part, t in ts.items()}, str(path))
    layers = {}
    for name, found in sorted(parts.items()):
        if "lora_A" not in found or "lora_B" not in found:
            raise CheckpointError(f"{path}: layer {name!r} has only {', '.join(sorted(found))}")
        down, up = found["lora_A"], found["lora_B"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise CheckpointError(
                f"{path}: layer {name!r} has lora_A {tuple(down.shape)} and lora_B {tuple(up.shape)}, "
                "which do not multiply (B @ A)"
            )
        alpha = float(found["alpha"]) if "alpha" in found else float(down.shape[0])
        layers[name] = LoRALayer(down, up, alpha)
    return LoRA(layers, alpha_in_file=all("alpha" in found for found in parts.values()))


def _strip(key: str) -> str:
    """A key without the wrappers training code puts in front of (and inside) layer names."""
    key = key.replace("._fsdp_wrapped_module", "")
    changed = True
    while changed:
        changed = False
        for wrapper in _WRAPPERS:
            if key.startswith(wrapper):
                key, changed = key[len(wrapper) :], True
    return key


@torch.no_grad()
def merge_lora(transformer: WanTransformer3DModel, lora: LoRA, where: str) -> int:
    """Add every layer's update into `transformer`'s weights, in place; returns the number merged.

    Nothing is changed unless every layer fits: a layer the transformer lacks, or an update of
    another shape, is a CheckpointError naming it.
    """
    parameters = dict(transformer.named_parameters())
    targets = {}
    for name, layer in lora.layers.items():
        weight = name + ".weight"
        if weight not in parameters:
            try:
                weight = original_to_diffusers_name(weight)
            except CheckpointError:
                raise CheckpointError(
                    f"{where}: the LoRA targets {name!r}, which the transformer has not"
                ) from None
        if weight not in parameters:
            raise CheckpointError(f"{where}: the LoRA targets {name!r}, which the transformer has not")
        shape = (layer.up.shape[0], layer.down.shape[1])
        if tuple(parameters[weight].shape) != shape:
            raise CheckpointError(
                f"{where}: the LoRA's update of {name!r} is {shape}, the layer is "
                f"{tuple(parameters[weight].shape)} (an adapter for another model size)"
            )
        targets[weight] = layer
    for weight, layer in targets.items():
        parameter = parameters[weight]
        parameter.copy_((parameter.float() + layer.delta().to(parameter.device)).to(parameter.dtype))
    return len(targets)
