"""The transformer dynamics model, its presets, and KV-cache imagination."""

from tdm_dist.model.transformer import PRESETS, TDM, TDMConfig, preset

__all__ = ["PRESETS", "TDM", "TDMConfig", "preset"]
