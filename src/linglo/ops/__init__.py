"""Ops: the key-only attention computation (no modules here)."""
from .key_only import (eager_plain, key_only_attention, key_only_attention_axial, key_only_attention_general,
                       key_only_attention_reference, positional_mix)

__all__ = ["key_only_attention", "key_only_attention_axial", "key_only_attention_general",
           "key_only_attention_reference", "positional_mix", "eager_plain"]
