"""The built-in methods; importing this module registers them (the registry does it on first use)."""

from methods.baselines import segmentation
from methods.maskd import method

__all__ = ["method", "segmentation"]
