"""Making the built-in tiny world model: ``worldsim train``, ``worldsim eval`` and the README's figure.

``config`` (the run's settings), ``data`` (episodes and the latent data set), ``losses`` (what each
stage minimises), ``stages`` (the one training loop), ``train`` (the stages and the bundle),
``card`` (the model card), ``evaluate`` (measurements against the procedural world), ``figure``.
"""
