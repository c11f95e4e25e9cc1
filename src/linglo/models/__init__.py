"""Models: the LinGlo family, registered with timm on import."""
from .linglo import (FAMILY, HISTORY, KEY_ONLY_DEFAULTS, LAYOUTS, AttentionBlock, ConvBlock, Downsample, LinGlo,
                     LinGloStage, Stem, block_kinds, checkpoint_filter_fn, fuse, legacy_model_kwargs, linglo_m, linglo_s,
                     linglo_t, linglo_xs)
from .summary import count_gmacs, count_params, describe, describe_family

__all__ = ["FAMILY", "HISTORY", "KEY_ONLY_DEFAULTS", "LAYOUTS", "LinGlo", "LinGloStage", "AttentionBlock", "ConvBlock",
           "Downsample", "Stem", "block_kinds", "checkpoint_filter_fn", "fuse", "legacy_model_kwargs", "linglo_t",
           "linglo_xs", "linglo_s", "linglo_m", "count_gmacs", "count_params", "describe", "describe_family"]
