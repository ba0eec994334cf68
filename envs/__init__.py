"""Environments: Gymnasium environments over a world model, and the procedural world the tiny one imitates.

``envs.world_env``: the Gymnasium environment ``worldsim/World-v0`` over a world model, with the
wrappers of ``envs.wrappers`` (recording replays); ``envs.procedural``: the ground-truth world, its
probes, rewards and scenario (numpy only); ``envs.tiny``: the making of the built-in tiny model
(training, evaluation).

Importing this package registers ``worldsim/World-v0`` (with its native vector environment,
``envs.vector_env``, for ``gymnasium.make_vec``) and its ground-truth twin ``worldsim/Procedural-v0``
(``envs.procedural_env``), so ``gymnasium.make("envs:worldsim/World-v0")`` works without importing
anything first (Gymnasium 1.x has no plugin entry points). The environment modules, and torch with
them, are imported only when an environment is made.
"""

from __future__ import annotations

ENV_ID = "worldsim/World-v0"
TWIN_ID = "worldsim/Procedural-v0"

try:
    import gymnasium
except ImportError:  # the ground-truth world and probes need only numpy
    pass
else:
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID,
            entry_point="envs.world_env:WorldEnv",
            vector_entry_point="envs.vector_env:WorldVectorEnv",
            max_episode_steps=1000,
        )
    if TWIN_ID not in gymnasium.registry:
        gymnasium.register(
            id=TWIN_ID, entry_point="envs.procedural_env:ProceduralEnv", max_episode_steps=1000
        )
