"""Plain-PyTorch reference twins of every fast op: the specification the kernels are held to."""
from twm_fast.reference.attention import rel_attention_ref, rel_attention_step_ref
from twm_fast.reference.categorical import categorical_sample_ref
from twm_fast.reference.discount_reset import discount_reset_ref
from twm_fast.reference.episode_mask import episode_mask_ref
from twm_fast.reference.gae import gae_ref
from twm_fast.reference.linear import fused_linear_ref

__all__ = ["rel_attention_ref", "rel_attention_step_ref", "categorical_sample_ref", "gae_ref", "fused_linear_ref",
           "discount_reset_ref", "episode_mask_ref"]
