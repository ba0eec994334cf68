"""worldsim: an interactive world engine over autoregressive video diffusion with infinity-RoPE.

    import worldsim
    world = worldsim.load("tiny")            # or a bundle folder, or a Wan2.1 diffusers folder
    session = world.session("a sunny meadow", seed=0)
    block = session.step()                   # block.frames: (T, H, W, 3) uint8
    session.set_prompt("a rainy meadow")     # KV Flush before the next block
    session.cut("a snowy mountain")          # RoPE Cut before the next block

Names are imported on first use, so `import worldsim` stays light (torch and diffusers load
only when a model is).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PRESETS": "worldsim.config",
    "EngineConfig": "worldsim.config",
    "Block": "worldsim.session",
    "Session": "worldsim.session",
    "BundleError": "worldsim.bundle",
    "World": "worldsim.world",
    "load": "worldsim.bundle",
    "random_world": "worldsim.bundle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'worldsim' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
