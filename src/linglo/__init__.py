"""LinGlo: hybrid convolution + key-only attention vision backbones.

`import linglo` registers linglo_t / linglo_xs / linglo_s / linglo_m with timm:
    timm.create_model("linglo_xs", num_classes=10, features_only=True, out_indices=(1, 2, 3))
`linglo.fuse(model)` folds a model for inference (BatchNorm and layer scale into convs; timm's reparameterize).
"""
from . import models  # noqa: F401  (registers the family with timm)
from .models import fuse
from .ops import key_only_attention, key_only_attention_reference

__version__ = "0.3.0"
__all__ = ["fuse", "key_only_attention", "key_only_attention_reference", "models", "__version__"]
