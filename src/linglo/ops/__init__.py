"""Ops: the key-only attention computation (no modules here): the op, its O(N²) reference, the fused-kernel switch."""
from .key_only import (eager_plain, key_only_attention, key_only_attention_reference, position_kernels,
                       positional_mix, use_fused_kernels)

__all__ = ["key_only_attention", "key_only_attention_reference", "positional_mix", "position_kernels",
           "use_fused_kernels", "eager_plain"]
