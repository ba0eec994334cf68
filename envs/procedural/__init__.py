"""The procedural ground-truth world the tiny model is trained on and measured against (numpy only).

``world``: the deterministic, infinite top-down world, its actions and their text prompts;
``probes``: measurements of frames (generated or real) against it (motion, biome, light, look);
``rewards``: reward functions from the probes; ``scenario.toml``: its actions as a scenario.
"""
