"""LinGlo: hybrid convolution + key-only attention vision backbones.

`import linglo` registers linglo_t / linglo_xs / linglo_s / linglo_m with timm:
    timm.create_model("linglo_xs", num_classes=10, features_only=True, out_indices=(1, 2, 3))
"""
from . import models  # noqa: F401  (registers the family with timm)
from .ops import key_only_attention, key_only_attention_reference

__version__ = "0.1.0"
__all__ = ["key_only_attention", "key_only_attention_reference", "models", "__version__"]
