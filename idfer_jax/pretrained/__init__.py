"""Pretrained weights converted from third-party checkpoints (see each submodule for the source).

Submodules are not imported here: converting needs TensorFlow, which callers that only load a converted
checkpoint should not pay for.
"""
