"""Environments: Gymnasium environments over a world model, and the procedural world the tiny one imitates.

``envs.world_env``: the Gymnasium environment ``worldsim/World-v0`` over a world model, with the
wrappers of ``envs.wrappers`` (recording replays); ``envs.procedural``: the ground-truth world, its
probes, rewards and scenario (numpy only); ``envs.tiny``: the making of the built-in tiny model
(training, evaluation).

Importing this package registers ``worldsim/World-v0``, so ``gymnasium.make("envs:worldsim/World-v0")``
works without importing anything first (Gymnasium 1.x has no plugin entry points). The environment
module, and torch with it, is imported only when the environment is made.
"""

from __future__ import annotations

ENV_ID = "worldsim/World-v0"

try:
    import gymnasium
except ImportError:  # the ground-truth world and probes need only numpy
    pass
else:
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="envs.world_env:WorldEnv", max_episode_steps=1000)
