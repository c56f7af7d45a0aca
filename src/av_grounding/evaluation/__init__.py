"""Evaluation (definitions in docs/metrics.md): answer parsing, 2D/3D IoU, COCO-style AP,
nuScenes-style centre-distance metrics, the recipe's metrics without its two bugs, plots."""
