"""One evaluation configuration: every threshold and bin the metrics use, checked together (in
the manner of nuscenes-devkit's ``DetectionConfig``). Thresholds that define a published metric
(COCO's 0.50:0.95, Omni3D's 0.05:0.50, the recipe's) are fixed here, not params, so that numbers
stay comparable; what a user may tune comes from ``EvaluateParams``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PipelineError
from ..geometry.codecs import CODECS
from ..params import EvaluateParams


class ConfigError(PipelineError, ValueError):
    """The evaluation parameters contradict each other; the message names the keys."""


def _steps(first: float, last: float, count: int) -> tuple[float, ...]:
    """Thresholds as pycocotools and Omni3D build them (np.linspace, not rounded)."""
    return tuple(float(t) for t in np.linspace(first, last, count))


@dataclass(frozen=True)
class EvaluationConfig:
    """Thresholds (IoU: unitless; distances: metres, in the camera's ground plane x-z) and bins.

    Raises ``ConfigError`` when ``tp_distance_m`` is not one of ``distance_thresholds_m``, a
    distance is not positive, the depth bins are not two increasing positive limits, or the codec
    is unknown.
    """

    codec: str = "cosmos"
    depth_bins_m: tuple[float, ...] = (10.0, 35.0)
    distance_thresholds_m: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    tp_distance_m: float = 2.0
    match_distance_m: float = 2.0
    coco_thresholds: tuple[float, ...] = _steps(0.5, 0.95, 10)  # COCO, AP2D
    ap3d_thresholds: tuple[float, ...] = _steps(0.05, 0.5, 10)  # Omni3D, AP3D
    max_detections: int = 100  # COCO's maxDets, per frame and class
    min_recall: float = 0.1  # nuScenes: precision below this recall is not averaged
    min_precision: float = 0.1  # nuScenes: precision below this counts as zero
    # The recipe's evaluator: thresholds built as it builds them (0.5 + 0.05 i), to the last bit.
    recipe_thresholds: tuple[float, ...] = tuple(0.5 + 0.05 * i for i in range(10))
    recipe_iou_threshold: float = 0.5  # its IoU Accuracy

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"evaluate.codec: unknown box codec {self.codec!r}; choose from {sorted(CODECS)}")
        if not self.distance_thresholds_m or min(self.distance_thresholds_m) <= 0:
            raise ConfigError("evaluate.distance_thresholds_m must be positive distances, "
                              f"got {self.distance_thresholds_m}")
        if self.tp_distance_m not in self.distance_thresholds_m:
            raise ConfigError(f"evaluate.tp_distance_m ({self.tp_distance_m}) must be one of "
                              f"evaluate.distance_thresholds_m {list(self.distance_thresholds_m)}")
        if len(self.depth_bins_m) != 2 or not 0 < self.depth_bins_m[0] < self.depth_bins_m[1]:
            raise ConfigError(f"evaluate.depth_bins_m must be two increasing positive limits, got {self.depth_bins_m}")
        if self.match_distance_m <= 0:
            raise ConfigError(f"evaluate.match_distance_m must be positive, got {self.match_distance_m}")

    @classmethod
    def from_params(cls, params: EvaluateParams) -> EvaluationConfig:
        return cls(codec=params.codec, depth_bins_m=tuple(params.depth_bins_m),
                   distance_thresholds_m=tuple(params.distance_thresholds_m), tp_distance_m=params.tp_distance_m,
                   match_distance_m=params.match_distance_m)

    @property
    def depth_ranges(self) -> dict[str, tuple[float, float]]:
        """Bin name -> [low, high) depth (camera z, metres) of the ground truth it holds."""
        near, far = self.depth_bins_m
        return {"near": (0.0, near), "medium": (near, far), "far": (far, float("inf"))}
