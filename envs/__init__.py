"""Environments: the procedural ground-truth world, its probes and the scenario data for play.

``envs.procedural`` is the deterministic top-down world (numpy only) that the tiny video model is trained
on; ``envs.probes`` measures generated frames against it (motion, biome, light, look);
``envs/tiny_scenario.toml`` names the world's actions for keyboard play, the action space and replays.
"""
