"""The environments: the shared token-episode core, the vector env, the multi-turn base, one task per module.

``core`` keeps the batched token state and rewards; ``text_gen`` is the single-turn env every task builds on,
``vector`` its batched counterpart, ``conversation`` the multi-turn base; ``reference`` is the frozen reference
LM for KL-shaped rewards and action masks. Make an env through Gymnasium (``gym.make("TextGen-v0")``).
"""
