"""Precision in one place: moving a model to a device and dtype, with its float32 modules kept in float32.

diffusers names the modules of ``WanTransformer3DModel`` that must stay in float32 whatever the
model's dtype (``_keep_in_fp32_modules``: RoPE, the time embedder, the modulation tables and the
norms); ``FP32_MODULES`` is that list, and ``cast_module`` honours it for weights and buffers alike.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

import torch
from diffusers import WanTransformer3DModel
from torch import nn

FP32_MODULES: tuple[str, ...] = tuple(WanTransformer3DModel._keep_in_fp32_modules or ())

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def keeps_fp32(name: str, keep_fp32: Collection[str]) -> bool:
    """Whether a parameter or buffer (dotted name) lies in one of the `keep_fp32` modules."""
    return any(part in keep_fp32 for part in name.split("."))


@torch.no_grad()
def cast_module(
    module: ModuleT,
    dtype: torch.dtype,
    device: str | torch.device | None = None,
    keep_fp32: Collection[str] = (),
) -> ModuleT:
    """Move `module` to `device` and its floating weights and buffers to `dtype`, in place; returns it.

    Those inside a module named in `keep_fp32` (any segment of the dotted name) go to float32.
    """
    if device is not None:
        module.to(device)
    for module_name, child in module.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, parameter in child.named_parameters(recurse=False):
            if parameter.is_floating_point():
                keep = keeps_fp32(prefix + name, keep_fp32)
                parameter.data = parameter.data.to(torch.float32 if keep else dtype)
        for name, buffer in child.named_buffers(recurse=False):
            if buffer.is_floating_point():
                keep = keeps_fp32(prefix + name, keep_fp32)
                setattr(child, name, buffer.to(torch.float32 if keep else dtype))
    return module
