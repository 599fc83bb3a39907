"""Stand-in for ImageNet pretraining on the embedded default (no download possible): multi-label patches.

Segmentation: random crops of street scenes; a patch's target marks each of the 19 train classes covering at
least 2 % of it. Detection: object-centred crops of the detection scenes, targets over the 8 categories.
Scenes are drawn from split code 2 (``SeedSequence([seed, 2, i])``) while train and val images use codes 0
and 1, so no pretraining scene is a train or val image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

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


def make_object_crop_set(n_scenes: int, height: int, width: int, patch: int,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 crops [N, patch, patch, 3] and float32 multi-label targets [N, 8] of the detection scenes.

    ImageNet is object-centric, so the detection stand-in is too: each crop is a square around one object
    of a scene (side 1.2–2× the box's longer side, at least ``patch // 2`` px, randomly offset, clipped to
    the image) resized to ``patch``; its target marks every category whose visible box lies at least half
    inside the crop. Scenes come from split code 2, disjoint from train (0) and val (1); N = 4 per scene.
    """
    from benchmark.data._coco_scene import render_coco_scene  # the detection renderer; segmentation never needs it
    from benchmark.data._coco_shapes import CATEGORIES

    if not 0 < patch <= min(height, width):
        raise ValueError(f"patch {patch} must be in 1..{min(height, width)} for {height}x{width} scenes")
    column = {category: i for i, category in enumerate(CATEGORIES)}
    patches = np.empty((n_scenes * CROPS_PER_SCENE, patch, patch, 3), np.uint8)
    targets = np.zeros((n_scenes * CROPS_PER_SCENE, len(column)), np.float32)
    for scene in range(n_scenes):
        rng = scene_rng(seed, PRETRAIN_SPLIT_CODE, scene)
        image, anns = render_coco_scene(rng, height, width)
        boxes = np.array([a["bbox"] for a in anns], np.float64)  # x, y, w, h of the visible pixels
        for k, pick in enumerate(rng.choice(len(anns), CROPS_PER_SCENE, replace=len(anns) < CROPS_PER_SCENE)):
            x, y, w, h = boxes[pick]
            side = min(max(patch // 2, rng.uniform(1.2, 2.0) * max(w, h)), height, width)
            x0 = np.clip(x + w / 2 - side / 2 + rng.uniform(-0.15, 0.15) * side, 0, width - side)
            y0 = np.clip(y + h / 2 - side / 2 + rng.uniform(-0.15, 0.15) * side, 0, height - side)
            crop = Image.fromarray(image).resize((patch, patch), Image.BILINEAR, (x0, y0, x0 + side, y0 + side))
            n = scene * CROPS_PER_SCENE + k
            patches[n] = np.asarray(crop)
            inside_w = np.clip(np.minimum(boxes[:, 0] + boxes[:, 2], x0 + side) - np.maximum(boxes[:, 0], x0), 0, None)
            inside_h = np.clip(np.minimum(boxes[:, 1] + boxes[:, 3], y0 + side) - np.maximum(boxes[:, 1], y0), 0, None)
            inside = inside_w * inside_h >= 0.5 * boxes[:, 2] * boxes[:, 3]
            inside[pick] = True
            targets[n, [column[anns[i]["category_id"]] for i in np.flatnonzero(inside)]] = 1.0
    return patches, targets
