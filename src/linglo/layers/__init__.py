"""Layers: the token mixers (key-only attention and the comparison mixers), the banded pointwise MLP, and the
inference-time folding helpers (layers.fuse: BatchNorm / layer scale into the conv next to them)."""
from .mlp import BandedConvMlp
from .token_mixers import (TOKEN_MIXERS, IdentityMixer, KeyOnlyAttention, LinearAttention, SeparableAttention,
                           SoftmaxAttention, apply_mask, create_token_mixer)

__all__ = ["BandedConvMlp", "TOKEN_MIXERS", "IdentityMixer", "KeyOnlyAttention", "LinearAttention",
           "SeparableAttention", "SoftmaxAttention", "apply_mask", "create_token_mixer"]
