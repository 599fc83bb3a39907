"""Paper figures drawn from the cache, without retraining (`python -m benchmark.figures`).

- Fig. 6 (`masks.py`): the teacher's learned receptive-token masks on val images (image, GT, the T masks).
- Fig. 4 (`token_variants.py`): masks of random, diversity-only and learned tokens on the same images.

`caches.py` finds the cached teachers (`<cache>/teachers/`) and token stages (`<cache>/stages/tokens-*`);
`common.py` loads a teacher and val images and renders/saves figures (PNG and PDF, written atomically).
"""
