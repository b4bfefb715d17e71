"""tdm_dist: transformer dynamics models for model-predictive control, on Ray."""

__version__ = "0.1.0"
