"""Stand-in for ImageNet pretraining on the embedded default (no download possible): multi-label patches.

Patches are random crops of street scenes from the dataset's own renderer, drawn from split code 2
(``SeedSequence([seed, 2, i])``) while train and val images use codes 0 and 1, so no pretraining scene is a
train or val image. A patch's target marks each of the 19 train classes covering at least 2 % of it.
"""

from __future__ import annotations

import numpy as np

from benchmark.data.cityscapes import CITYSCAPES_CLASSES, IGNORE_INDEX, label_id_to_train_id_lut
from benchmark.data.synthetic import render_scene, scene_rng

PRETRAIN_SPLIT_CODE = 2
CROPS_PER_SCENE = 4
MIN_FRACTION = 0.02


def make_patch_classification_set(n_scenes: int, height: int, width: int, patch: int,
                                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 patches [N, patch, patch, 3] and float32 multi-label targets [N, 19], N = 4 crops per scene."""
    if not 0 < patch <= min(height, width):
        raise ValueError(f"patch {patch} must be in 1..{min(height, width)} for {height}x{width} scenes")
    lut, classes = label_id_to_train_id_lut(), len(CITYSCAPES_CLASSES)
    patches = np.empty((n_scenes * CROPS_PER_SCENE, patch, patch, 3), np.uint8)
    targets = np.empty((n_scenes * CROPS_PER_SCENE, classes), np.float32)
    for scene in range(n_scenes):
        rng = scene_rng(seed, PRETRAIN_SPLIT_CODE, scene)
        image, label_ids = render_scene(rng, height, width)
        train_ids = lut[label_ids]
        for k in range(CROPS_PER_SCENE):
            n = scene * CROPS_PER_SCENE + k
            y, x = rng.integers(height - patch + 1), rng.integers(width - patch + 1)
            patches[n] = image[y:y + patch, x:x + patch]
            counts = np.bincount(train_ids[y:y + patch, x:x + patch].ravel(), minlength=IGNORE_INDEX + 1)
            targets[n] = counts[:classes] >= MIN_FRACTION * patch * patch
    return patches, targets
