"""The built-in methods; importing this module registers them (the registry does it on first use)."""

from methods.baselines import detection, segmentation
from methods.maskd import detection as maskd_detection
from methods.maskd import method

__all__ = ["detection", "maskd_detection", "method", "segmentation"]
