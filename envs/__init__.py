"""Environments: the procedural ground-truth world, its probes, scenario data and a Gymnasium environment.

``envs.procedural`` is the deterministic top-down world (numpy only) that the tiny video model is trained
on; ``envs.probes`` measures generated frames against it (motion, biome, light, look);
``envs/tiny_scenario.toml`` names the world's actions for keyboard play, the action space and replays;
``envs.world_env`` wraps a world model as the Gymnasium environment ``worldsim/World-v0``, with the reward
functions of ``envs.rewards``.

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
        gymnasium.register(
            id=ENV_ID,
            entry_point="envs.world_env:WorldEnv",
            max_episode_steps=None,
            disable_env_checker=False,
        )
