"""Layers: LinGlo's blocks and the token mixers (key-only attention and the comparison mixers)."""
from .blocks import AttentionBlock, ConvBlock, ConvMlp, Downsample, Stem, apply_mask
from .token_mixers import (TOKEN_MIXERS, IdentityMixer, KeyOnlyAttention, LinearAttention, SeparableAttention,
                           SoftmaxAttention, create_token_mixer)

__all__ = ["AttentionBlock", "ConvBlock", "ConvMlp", "Downsample", "Stem", "apply_mask", "TOKEN_MIXERS",
           "IdentityMixer", "KeyOnlyAttention", "LinearAttention", "SeparableAttention", "SoftmaxAttention",
           "create_token_mixer"]
