"""Typed parameters for every stage, loaded from ``params.yaml`` with command-line overrides.

All defaults live here; ``params.yaml`` repeats them so that DVC can track each key.
"""

from __future__ import annotations

import collections.abc
import copyreg
import dataclasses
import functools
import math
import re
import types
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from .errors import PipelineError

RECIPE_CAMERAS: tuple[str, ...] = (
    "camera_front_wide_120fov",
    "camera_cross_left_120fov",
    "camera_cross_right_120fov",
    "camera_rear_left_70fov",
    "camera_rear_right_70fov",
)


# Raw RDS-HQ object types -> output labels; types not listed (pedestrians, cyclists, ...) are dropped.
DEFAULT_LABEL_MAP = MappingProxyType({
    "Car": "car", "Automobile": "car", "Vehicle": "car", "Other_vehicle": "car",
    "Truck": "truck", "Heavy_truck": "truck",
    "Bus": "bus", "Trolley_bus": "bus",
    "Trailer": "trailer",
    "Train_or_tram_car": "train",
})


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def read_only(mapping: Mapping[str, str]) -> MappingProxyType:
    """A read-only copy of ``mapping``, the form of every mapping parameter."""
    return MappingProxyType(dict(mapping))


# Mapping parameters travel to worker processes like the rest of their stage's parameters.
copyreg.pickle(MappingProxyType, lambda mapping: (read_only, (dict(mapping),)))


# The fixed choices of parameters: checked when the parameters load, listed by ``--help``.
X264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                     "veryslow", "placebo"]
CameraModel = Literal["pinhole", "ftheta"]
Strategy = Literal["auto", "decode_all", "seek", "keyframes"]
Executor = Literal["local", "ray"]
CodecName = Literal["cosmos", "qwen3vl"]
BoxOrder = Literal["nearest", "left_to_right", "track"]
ModelFamily = Literal["qwen2_5_vl", "qwen3_vl"]
CameraInput = Literal["none", "prompt", "virtual_camera", "image_centre"]
Backend = Literal["hf", "cosmos-rl"]
Preset = Literal["cr1-cosmos-rl", "cr2-cosmos-rl", "cr2-qwen-finetune"]
Schedule = Literal["cosine", "constant"]
Attention = Literal["sdpa", "eager"]
VisionAttention = Literal["packed", "per_segment"]
KVCache = Literal["static", "dynamic"]
FusedKernels = Literal["none", "liger"]
Precision = Literal["fp32", "bf16_stochastic"]
Layout = Literal["rdshq", "waymo"]
CheckpointChoice = Literal["all", "none"]

EXECUTOR_HELP = "local (a process pool of `workers` processes) or ray (one task per item on a Ray cluster)"
RAY_ADDRESS_HELP = ("executor ray: the cluster to join (the address `ray start --head` prints, or auto); "
                    "null: RAY_ADDRESS, else a new Ray instance on this machine")


class ParamsError(PipelineError, ValueError):
    """A parameter file or override is malformed; the message names the file and key."""


def param(default: Any, help: str, minimum: float | None = None, maximum: float | None = None) -> Any:
    """A parameter with its help text (shown by ``--help``) and, for numbers, the inclusive
    range its values must lie in (checked when parameters load)."""
    metadata = {"help": help, "minimum": minimum, "maximum": maximum}
    if isinstance(default, Mapping):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Checked:
    """Base of the parameter classes: every field is checked (type, fixed choices, range) when an
    instance is made, from the params file or in code; lists become tuples."""

    __dataclass_fields__: typing.ClassVar[dict[str, dataclasses.Field[Any]]]  # every subclass is a dataclass

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = coerce(type(self), field.name, getattr(self, field.name), type(self).__name__)
            object.__setattr__(self, field.name, value)


@dataclasses.dataclass(frozen=True)
class SynthesizeParams(Checked):
    """Synthetic RDS-HQ clips: scene content, rendering size and video encoding."""

    seed: int = param(0, "seed of every random choice; same seed, same bytes", minimum=0)
    num_clips: int = param(8, "number of clips", minimum=1)
    layout: Layout = param(
        "rdshq", "rdshq: native RDS-HQ clips; waymo: as NVIDIA's toolkit converts Waymo Open segments "
        "(their clip ids and camera names front, front_left, front_right, side_left, side_right, a global "
        "world frame, every vehicle 'Car', pinhole only; set fps 10 as there)")
    camera_model: CameraModel = param(
        "pinhole", "lens the videos are rendered through; videos go to <camera_model>_<camera>/")
    cameras: tuple[str, ...] = param(RECIPE_CAMERAS, "cameras to render (names of the layout)")
    duration_s: float = param(3.0, "clip length in seconds", minimum=0.1)
    fps: int = param(30, "video frame rate; poses are written at 30 Hz and labels at 10 Hz whatever it is", minimum=1)
    width: int = param(640, "video width of a native 1920x1080 camera (other native sizes scale alike); even, "
                       "as H.264 in yuv420p needs", minimum=16)
    height: int = param(360, "video height of a native 1920x1080 camera (other native sizes scale alike); even, "
                        "as H.264 in yuv420p needs", minimum=16)
    keyframe_interval: int | None = param(30, "force a keyframe every N frames; null: x264 decides", minimum=1)
    crf: int = param(23, "x264 constant rate factor (lower: better quality, bigger files)", minimum=0, maximum=51)
    preset: X264Preset = param("veryfast", "x264 preset (speed against file size)")
    num_vehicles: int = param(18, "vehicles drawn at random, beside the fixed occluder/hidden pair", minimum=0)
    num_pedestrians: int = param(4, "pedestrians and cyclists (non-vehicles curation must drop)", minimum=0)
    stamp_frame_index: bool = param(True, "stamp the frame index into the pixels (for tests)")
    workers: int = param(2, "parallel processes over clips (executor local)", minimum=1)
    executor: Executor = param("local", EXECUTOR_HELP)
    ray_address: str | None = param(None, RAY_ADDRESS_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("width", "height"):  # an odd size would be rounded silently to an even one
            value = getattr(self, key)
            if value % 2:
                raise ParamsError(f"synthesize.{key} = {value} is odd; H.264 in yuv420p needs even sizes "
                                  f"({value - 1} or {value + 1})")


@dataclasses.dataclass(frozen=True)
class ExtractParams(Checked):
    """Frame extraction from an RDS-HQ root, local or ``s3://``."""

    input_root: str = param("data/synthetic", "RDS-HQ root: local folder or s3://bucket/prefix")
    sequence_ids_file: str | None = param(None, "file with one clip id per line; null: every clip")
    cameras: tuple[str, ...] = param(RECIPE_CAMERAS, "cameras to extract, named as the clip's files name them")
    camera_names: Mapping[str, str] = param(
        MappingProxyType({}), "camera name in the clip's files -> name in the records and outputs "
        "(e.g. front: camera_front_wide_120fov for Waymo conversions); unlisted cameras keep their names")
    camera_model: CameraModel = param("pinhole", "video folder prefix and intrinsics")
    skip_frames: int = param(30, "keep video frames 0, N, 2N, ... (30 = 1 per second at 30 fps, 10 at 10 fps)",
                             minimum=1)
    strategy: Strategy = param("auto", "how frames are decoded (auto: fewest decoded frames)")
    jpeg_quality: int = param(95, "JPEG quality of the written frames", minimum=1, maximum=100)
    workers: int = param(2, "parallel processes over (clip, camera) items (executor local)", minimum=1)
    executor: Executor = param("local", EXECUTOR_HELP)
    ray_address: str | None = param(None, RAY_ADDRESS_HELP)
    max_failed_fraction: float = param(0.05, "fail the stage when more of its items fail (always when all do)",
                                       minimum=0.0, maximum=1.0)
    s3_endpoint_url: str | None = param(None, "S3-compatible endpoint; null: AWS default")
    s3_profile: str | None = param(None, "AWS profile name for s3:// inputs")


@dataclasses.dataclass(frozen=True)
class TransformParams(Checked):
    """World-frame labels to camera-frame boxes."""

    codec: CodecName = param("cosmos", "box convention of the nine numbers (docs/conventions.md#box-codecs)")
    workers: int = param(2, "parallel processes over records files (clip, camera)", minimum=1)


@dataclasses.dataclass(frozen=True)
class FilterParams(Checked):
    """Which boxes stay in the training set (each removal counted per reason)."""

    label_map: Mapping[str, str] = param(DEFAULT_LABEL_MAP, "raw object type -> output label; other types are dropped")
    max_distance_m: float = param(100.0, "drop boxes whose centre is farther from the camera", minimum=0.0)
    min_in_image_fraction: float = param(0.0, "drop boxes with less of their projected 2D box inside the image "
                                         "(0: any overlap)", minimum=0.0, maximum=1.0)
    occlusion_max_covered: float = param(0.95, "drop boxes whose 2D box is covered this much by closer objects' "
                                         "2D boxes (above 1: never)", minimum=0.0)
    depth_min_visible: float = param(0.1, "drop boxes with fewer lines of sight reaching them before a closer 3D box",
                                     minimum=0.0, maximum=1.0)
    depth_rays_per_side: int = param(12, "lines of sight per box: a grid of N x N over its 2D box", minimum=1)
    truth_min_visible_fraction: float = param(0.1, "renderer truth: visible fraction that counts as truly visible",
                                              minimum=0.0, maximum=1.0)
    truth_min_visible_pixels: int = param(4, "renderer truth: visible pixels that count as truly visible", minimum=0)
    workers: int = param(2, "parallel processes over records files (clip, camera)", minimum=1)


@dataclasses.dataclass(frozen=True)
class ValidateParams(Checked):
    """Overlay drawings and the numeric re-projection check."""

    sample_count: int = param(12, "frames drawn into plots/validation/", minimum=0)
    seed: int = param(0, "seed of the frame sample", minimum=0)
    max_residual_px: float = param(0.5, "fail when a box corner re-projects farther than this from its reference",
                                  minimum=0.0)


@dataclasses.dataclass(frozen=True)
class FormatParams(Checked):
    """Training sets: prompts, answer text, split, image size and token budget."""

    prompts: str = param("prompts/av_grounding.yaml", "YAML file with system_prompt and user_prompt")
    system_prompt: bool = param(True, "give the model the prompts file's system prompt; false: no system message, "
                                "as the recipe's Qwen-VL fine-tune data (Qwen2.5-VL's chat template then adds its "
                                "default 'You are a helpful assistant.', Qwen3-VL's adds none)")
    decimals: int | None = param(2, "decimals of every number in the answers (null: full precision)", minimum=0)
    size_decimals: int | None = param(None, "decimals of the three sizes (null: same as decimals)", minimum=0)
    trim_zeros: bool = param(True, "write 18 and 5.3, not 18.00 and 5.30")
    compact_json: bool = param(True, "no spaces after , and : in the answers")
    box_order: BoxOrder = param("nearest", "order of boxes in an answer (nearest first, by bearing, by track id)")
    max_boxes: int | None = param(50, "keep at most this many (nearest-first order keeps the nearest); null: all",
                                  minimum=0)
    keep_empty_frames: bool = param(True, "keep frames without vehicles (answer: [])")
    eval_clips: int = param(2, "clips held out for evaluation (chosen with split_seed); at least 1 unless "
                            "eval_clip_ids names them", minimum=0)
    eval_clip_ids: tuple[str, ...] = param((), "explicit held-out clip ids (wins over eval_clips)")
    split_seed: int = param(0, "seed of the held-out clip choice", minimum=0)
    model_family: ModelFamily = param("qwen2_5_vl", "qwen2_5_vl (28 px per image token) or qwen3_vl (32 px)")
    min_pixels: int = param(3136, "smallest image area after resizing, in pixels (training and inference)",
                            minimum=1)
    max_pixels: int = param(40960, "largest image area after resizing, in pixels (training and inference)",
                            minimum=1)
    model_max_length: int = param(4096, "samples longer than this (prompt + image + answer tokens) are dropped",
                                  minimum=1)
    camera_input: CameraInput = param(
        "none", "what tells the model which lens took the image: none; prompt: the intrinsics in the user prompt "
        "(in the answers' number style); virtual_camera: answer centres in a virtual camera of focal length "
        "virtual_focal (Omni3D's virtual depth); image_centre: each centre as its pixel (u, v) in the frame and "
        "its distance in that virtual camera (Omni3D's projected centre and virtual depth). Both are converted "
        "back to the real camera before evaluation (docs/conventions.md)")
    virtual_focal: float = param(1.0, "focal length of the virtual camera in image heights (camera_input: "
                                 "virtual_camera, image_centre); a lens of this focal length keeps its depths")
    crop_above_deg: float | None = param(None, "cut off the image rows more than this many degrees above the optical "
                                         "axis (the sky over a level camera's horizon), train and eval frames alike, "
                                         "so max_pixels covers the road at a higher resolution; null: whole frames "
                                         "(dataset/views.py)")
    mirror_train: bool = param(False, "also train on every training frame flipped left to right (image flipped, "
                               "boxes mirrored x -> -x, principal point moved to width - cx): twice the training "
                               "samples; evaluation frames never (dataset/views.py)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.virtual_focal) and self.virtual_focal >= 0.01):
            raise ParamsError(f"format.virtual_focal = {self.virtual_focal}: the virtual camera's focal length must "
                              "be a number of image heights of at least 0.01 (below, the scale the records keep to 6 "
                              "decimals loses its precision)")
        if self.crop_above_deg is not None and not 0.0 < self.crop_above_deg < 90.0:
            raise ParamsError(f"format.crop_above_deg = {self.crop_above_deg}: give an angle between 0 and 90 degrees "
                              "above the optical axis (null keeps whole frames)")
        if self.min_pixels > self.max_pixels:
            raise ParamsError(f"format.min_pixels ({self.min_pixels}) exceeds format.max_pixels ({self.max_pixels})")
        if self.eval_clips < 1 and not self.eval_clip_ids:
            raise ParamsError(f"format.eval_clips = {self.eval_clips}: the eval split must hold at least one clip "
                              "(or name them in format.eval_clip_ids)")


@dataclasses.dataclass(frozen=True)
class TrainParams(Checked):
    """Supervised fine-tuning. Image size and token budget come from the format section."""

    backend: Backend = param("hf", "hf (transformers/PyTorch, CPU or GPU) or cosmos-rl (GPU, its own environment)")
    cosmos_rl_executable: str = param("cosmos-rl", "launcher of a cosmos-rl install in its own environment "
                                      "(it needs transformers<5, av<19)")
    cosmos_rl_hf_model: bool = param(True, "cosmos-rl trains its wrapper of the Hugging Face class (sdpa) "
                                     "instead of its native model (needs flash-attn)")
    gpus: int = param(1, "GPUs of one run: cosmos-rl's data-parallel shards; the hf backend starts this many "
                         "processes under torchrun (data parallel, or ZeRO-3 with train.deepspeed)", minimum=1)
    model: str = param("tiny-qwen2_5_vl", "a built-in model, <size>-<architecture> with size tiny (CPU tests), small "
                       "(~80M) or base (~300M) and architecture qwen2_5_vl (Cosmos Reason 1) or qwen3_vl (Cosmos "
                       "Reason 2), randomly initialised; or a Hugging Face id or a local folder")
    seed: int = param(0, "seed of initialisation (built-in models) and data order", minimum=0)
    epochs: int = param(8, "passes over the training set (ignored when max_steps is set)", minimum=1)
    max_steps: int | None = param(None, "optimizer steps; null: epochs x steps per epoch", minimum=1)
    batch_size: int = param(4, "samples per micro-batch", minimum=1)
    grad_accum: int = param(1, "micro-batches per optimizer step", minimum=1)
    lr: float | None = param(None, "peak learning rate (AdamW); null: the built-in model size's (tiny 5e-3, "
                             "small 3e-4, base 1e-4), 1e-5 for other models", minimum=0.0)
    weight_decay: float = param(0.0, "AdamW weight decay", minimum=0.0)
    warmup_ratio: float = param(0.05, "share of steps with linear warmup", minimum=0.0, maximum=1.0)
    warmup_steps: int | None = param(None, "optimizer steps of linear warmup; overrides warmup_ratio (null: "
                                     "warmup_ratio decides)", minimum=0)
    schedule: Schedule = param("cosine", "learning rate after warmup: cosine decay or constant")
    grad_clip: float = param(1.0, "clip the gradient norm to this", minimum=0.0)
    train_vision: bool = param(True, "train the vision tower")
    train_projector: bool = param(True, "train the vision-language projector (merger)")
    train_llm: bool = param(True, "train the language model (ignored with lora)")
    lora: bool = param(False, "LoRA adapters on the language model instead of full fine-tuning")
    lora_rank: int = param(16, "LoRA rank", minimum=1)
    lora_alpha: int = param(32, "LoRA alpha")
    lora_dropout: float = param(0.05, "LoRA dropout", minimum=0.0, maximum=1.0)
    bf16: bool = param(True, "bf16 autocast on GPUs (CPU runs stay float32)")
    precision: Precision = param(
        "fp32", "hf backend without deepspeed: fp32: fp32 weights, gradients and AdamW moments (16 bytes a trained "
        "parameter; bf16 compute under autocast when train.bf16); bf16_stochastic: bf16 weights, gradients and "
        "moments (8 bytes), each AdamW update computed in fp32 and stochastically rounded into bf16 "
        "(training/optim.py: unbiased, so updates far below bf16's resolution, like the recipe's lr 2e-7, survive "
        "in expectation where rounding to nearest drops them); the saved model is bf16")
    gradient_checkpointing: bool = param(False, "recompute activations to save memory")
    checkpoint_fraction: float = param(
        1.0, "hf backend, with gradient_checkpointing: the share of the language model's decoder layers that "
        "recompute their activations in the backward, spread evenly over the depth (floor(layers x share) of them; "
        "1.0: all, transformers' default); the others keep their activations, which costs memory and saves their "
        "recomputation. The vision blocks always recompute (models/checkpointing.py)", minimum=0.0, maximum=1.0)
    fsdp_offload: bool = param(False, "cosmos-rl backend: keep the FSDP-sharded weights, gradients and optimizer "
                               "state in CPU memory (its fsdp_offload). The hf backend has no FSDP and keeps "
                               "everything on the GPU (warned); with train.deepspeed its config decides offloading")
    vision_attention: VisionAttention = param(
        "packed", "packed: one attention call per vision layer over all windows/images; per_segment: "
        "transformers' one call per window (same result, many more kernel launches)")
    fused_kernels: FusedKernels = param("none", "liger: Liger's fused rotary, RMSNorm and SwiGLU kernels (Triton) "
                                        "in the language model, on CUDA devices only (CPU runs keep PyTorch's)")
    attn_implementation: Attention = param("sdpa", "sdpa or eager (sdpa measured 2x faster on H200: "
                                           "benchmarks/train_throughput/results/train_throughput_h200.json)")
    save_every: int = param(40, "checkpoint every N steps (0: only the final model)", minimum=0)
    keep_checkpoints: int = param(
        0, "intermediate checkpoints kept, the newest (0: all of them): each is a whole model folder (the 7B in "
        "fp32 is 33 GB), an older one deleted as a newer one is written; only those kept become infer columns. "
        "cosmos-rl's max_keep is this plus one (its count includes the final export; 0: -1, all) and also bounds "
        "its resumable states (weights and AdamW state, about 100 GB each for the 7B in full fine-tuning)",
        minimum=0)
    max_nonfinite_steps: int = param(0, "steps with a non-finite loss or gradient norm to skip (update dropped, "
                                     "counted) before the run stops with an error; ZeRO-3 stops at the first",
                                     minimum=0)
    loader_workers: int | None = param(None, "data-loader processes that decode images during training; null: "
                                       "up to 8 on a GPU, 0 (in the training process) on a CPU", minimum=0)
    pad_to_multiple_of: int | None = param(None, "hf backend: right-pad each micro-batch to a length that is a "
                                           "multiple of this, so lengths repeat and cuDNN attention and cuBLAS "
                                           "reuse their plans (1.5 ms of host time an attention call for each new "
                                           "length on an H100); null: 64 on a GPU, 1 (no padding) on a CPU",
                                           minimum=1)
    deepspeed: str | None = param(None, "hf backend: a DeepSpeed ZeRO-3 config (configs/deepspeed_zero3.json) "
                                  "to shard the model over the GPUs of a torchrun launch")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision != "fp32" and (self.backend != "hf" or self.deepspeed is not None):
            raise ParamsError(f"train.precision = {self.precision} needs the hf backend without train.deepspeed "
                              "(cosmos-rl and DeepSpeed keep their own fp32 master weights)")
        if self.fsdp_offload and self.backend == "hf":
            warnings.warn("train.fsdp_offload applies to the cosmos-rl backend; the hf backend keeps the model on "
                          "the GPU" + (" (the DeepSpeed config decides offloading)" if self.deepspeed else ""),
                          stacklevel=2)
        if self.checkpoint_fraction != 1 and (self.backend != "hf" or not self.gradient_checkpointing):
            warnings.warn(f"train.checkpoint_fraction = {self.checkpoint_fraction} applies to the hf backend with "
                          "train.gradient_checkpointing; ignored here", stacklevel=2)


# The recipe's three training paths (docs/recipe.md#presets gives every value's source): the keys
# each replaces in the format and train sections when params.yaml's top-level `preset` names it.
# Files under cosmos-cookbook docs/recipes/post_training/reason2/av_3d_grounding/assets/; a key
# such a file leaves out takes its framework's default. train.model and train.backend stay the user's.
PRESETS: dict[Preset, dict[str, dict[str, Any]]] = {
    # configs/cr1_av_grounding.sft.toml: lr, schedule, warmup and weight decay are cosmos-rl's defaults;
    # train_batch_per_replica 32 in mini batches of 4; fsdp_offload; [custom.vision] max_pixels 40960.
    "cr1-cosmos-rl": {
        "format": {"model_family": "qwen2_5_vl", "system_prompt": True, "min_pixels": 3136, "max_pixels": 40960,
                   "model_max_length": 4096},
        "train": {"lr": 1e-6, "schedule": "constant", "warmup_steps": 20, "weight_decay": 0.01, "grad_clip": 1.0,
                  "epochs": 5, "batch_size": 4, "grad_accum": 8, "gradient_checkpointing": True,
                  "fsdp_offload": True, "save_every": 50, "keep_checkpoints": 2},
    },
    # configs/cr2_av_grounding.sft.toml: lr 2e-7, cosine, warmup 0.03 of the steps, train_batch_per_replica
    # 16 in mini batches of 4, no offload, [custom.vision] max_pixels 40960.
    "cr2-cosmos-rl": {
        "format": {"model_family": "qwen3_vl", "system_prompt": True, "min_pixels": 4096, "max_pixels": 40960,
                   "model_max_length": 4096},
        "train": {"lr": 2e-7, "schedule": "cosine", "warmup_ratio": 0.03, "warmup_steps": None, "weight_decay": 0.01,
                  "grad_clip": 1.0, "epochs": 2, "batch_size": 4, "grad_accum": 4, "gradient_checkpointing": True,
                  "fsdp_offload": False, "save_every": 50, "keep_checkpoints": 29},
    },
    # scripts/qwen_finetune_script.sh on qwen-vl-finetune: per device 2 x accumulation 8, its default image
    # budget (no --max_pixels), and its converter's data without a system prompt.
    "cr2-qwen-finetune": {
        "format": {"model_family": "qwen3_vl", "system_prompt": False, "min_pixels": 12544, "max_pixels": 451584,
                   "model_max_length": 4096},
        "train": {"lr": 2e-7, "schedule": "cosine", "warmup_ratio": 0.03, "warmup_steps": None, "weight_decay": 0.01,
                  "grad_clip": 1.0, "epochs": 2, "batch_size": 2, "grad_accum": 8, "gradient_checkpointing": True,
                  "fsdp_offload": False, "save_every": 20, "keep_checkpoints": 19},
    },
}
PRESET_SECTIONS: tuple[str, ...] = tuple(sorted({section for preset in PRESETS.values() for section in preset}))


@dataclasses.dataclass(frozen=True)
class RLParams(Checked):
    """Reinforcement learning after fine-tuning: GRPO (TRL's GRPOTrainer) from the train stage's
    final model, rewarded by the project's own matching (docs/rl_reward.md)."""

    steps: int = param(2, "GRPO optimizer steps (0: no RL; infer then adds no RL columns)", minimum=0)
    prompts_per_step: int = param(2, "training frames per step, each answered group_size times", minimum=1)
    group_size: int = param(4, "answers sampled per frame; GRPO's advantage is the reward against the group's",
                            minimum=2)
    lr: float = param(1e-4, "learning rate (AdamW, constant after no warmup)", minimum=0.0)
    kl: float = param(0.04, "KL coefficient (TRL's beta) against the starting model; 0: no reference model",
                      minimum=0.0)
    temperature: float = param(1.0, "sampling temperature of the answers (positive: GRPO needs answers that differ)",
                               minimum=0.0)
    max_answer_tokens: int = param(320, "generation budget of an answer; one cut off is penalised as truncated",
                                   minimum=1)
    save_every: int = param(0, "checkpoint (and infer column) every N steps (0: only the final model)", minimum=0)
    seed: int = param(0, "seed of frame order and sampling", minimum=0)
    gradient_checkpointing: bool = param(False, "recompute activations to save memory")
    precision: Precision = param(
        "fp32", "fp32: fp32 policy (bf16 autocast on a GPU), answers sampled with the dynamic KV cache (a static one "
        "fails under autocast with Qwen3-VL); bf16_stochastic: bf16 policy and reference, AdamW updates computed "
        "in fp32 and stochastically rounded (train.precision), answers sampled with a static KV cache whose "
        "decoding step transformers compiles on CUDA (what makes infer 3-20x faster there)")
    time_budget_s: float = param(
        0.0, "end at the step boundary nearest this many seconds of the steps' own time (TRL's step_time: "
        "generation, loss, update), before rl.steps (0: no budget). For comparisons at equal GPU time "
        "(benchmarks/rl_vs_sft): the steps made then depend on the machine's speed, so the outputs are not the "
        "same bytes on every machine; a resumed run counts the time from its resume", minimum=0.0)
    reward: Mapping[str, float | str | None] = param(
        MappingProxyType({}), "RewardConfig fields to change (evaluation/reward.py), e.g. {duplicate_weight: 1.0} or "
        "{max_answer_tokens: null}; the others keep their defaults")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise ParamsError(f"rl.temperature = {self.temperature}: sampling needs a positive temperature (at 0 the "
                              "group's answers are equal and GRPO has no advantage to follow)")


@dataclasses.dataclass(frozen=True)
class InferParams(Checked):
    """Generation on the evaluation split."""

    max_new_tokens: int = param(320, "generation budget per frame (longest default answer: 237 tiny-model tokens); "
                                     "reasoning: model writes its draft first and needs a far larger budget (the "
                                     "Cosmos Reason inference scripts allow 4096): a draft cut off is a failed answer",
                                minimum=1)
    batch_size: int = param(8, "frames per generate() call (left-padded)", minimum=1)
    zero_shot: bool = param(True, "also run the model before fine-tuning")
    checkpoints: CheckpointChoice | tuple[int, ...] = param(
        "all", "intermediate training checkpoints to run: all, none, or a list of steps such as 40,80")
    vision_attention: VisionAttention = param("packed", "packed or per_segment, as train.vision_attention")
    kv_cache: KVCache = param("static", "generation's KV cache: static (preallocated; on CUDA transformers then "
                                        "compiles the decoding step: 82M model on an H200 3-20x faster, "
                                        "benchmarks/infer_throughput/results/infer_throughput.md) or dynamic "
                                        "(grows per token)")
    reasoning: Literal["none", "model"] = param(
        "none", "none: the prompts as trained (plain JSON answers); model: each model's published reasoning "
                "instruction (prompts/reasoning.yaml, chosen by the model folder's config.model_type), in the message "
                "that model expects it: Cosmos Reason 1 (qwen2_5_vl) the system prompt, <think> then <answer>; "
                "Cosmos Reason 2 (qwen3_vl) the user prompt, <think> then the answer. Only the answer is scored")


@dataclasses.dataclass(frozen=True)
class EvaluateParams(Checked):
    """Scoring: thresholds and bins of the metrics (docs/metrics.md), checked together by
    ``av_grounding.evaluation.config.EvaluationConfig``."""

    codec: CodecName = param("cosmos", "box convention of files that do not name one (box_codec key)")
    depth_bins_m: tuple[float, float] = param((10.0, 35.0), "near / medium / far limits of AP3D by depth, in metres")
    distance_thresholds_m: tuple[float, ...] = param(
        (0.5, 1.0, 2.0, 4.0), "ground-plane centre distances of the centre-distance mAP (nuScenes)")
    tp_distance_m: float = param(2.0, "distance threshold whose true positives give the TP errors; "
                                      "one of distance_thresholds_m")
    match_distance_m: float = param(2.0, "centre distance for the precision/recall/error summary")
    overlays: int = param(6, "evaluation frames drawn with truth and predictions", minimum=0)
    bootstrap: int = param(1000, "clip-bootstrap replicates of each column's intervals (level 0.95) of AP2D50, AP3D, "
                                 "centre-distance mAP, recall and precision (intervals_95 in its metrics); 0: none",
                           minimum=0)
    bootstrap_seed: int = param(0, "seed of the clip bootstrap's resampling", minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bootstrap == 1:
            raise ParamsError("evaluate.bootstrap = 1: an interval needs at least 2 replicates (0: none)")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_type(cls: type, name: str) -> Any:
    return _type_hints(cls)[name]


def choices(hint: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` type (also inside ``Optional``); None for other types."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    literal = [a for a in typing.get_args(hint) if typing.get_origin(a) is Literal]
    return typing.get_args(literal[0]) if literal else None


def _element(element: type, value: Any) -> Any:
    """One list element as ``element`` (int, float or str); ints must be written as integers."""
    if element is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    return float(value) if element is float else str(value)


class _Mismatch(Exception):
    """A value does not fit one type; ``args[0]`` says what the type expects."""


def _coerce_scalar(hint: Any, value: Any) -> Any:
    """``value`` as the non-optional type ``hint``; ``_Mismatch`` saying what was expected."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise _Mismatch(f"one of {list(typing.get_args(hint))}")
        return value
    if origin in (collections.abc.Mapping, dict):
        if typing.get_args(hint)[1] is not str:  # names to scalars: numbers (ints stay ints), strings, null
            if not isinstance(value, typing.Mapping) or not all(
                    isinstance(k, str) and (v is None or isinstance(v, (int, float, str))) and not isinstance(v, bool)
                    for k, v in value.items()):
                raise _Mismatch("a mapping of names to numbers, strings or null")
            return MappingProxyType(dict(sorted(value.items())))
        if not isinstance(value, typing.Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise _Mismatch("a mapping of names to names")
        return read_only(dict(sorted(value.items())))
    if origin is tuple:
        element = typing.get_args(hint)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and element is not str:
            value = [value]
        try:
            if not isinstance(value, (list, tuple)):
                raise TypeError(value)
            return tuple(_element(element, v) for v in value)
        except (TypeError, ValueError):
            raise _Mismatch(f"a list of {element.__name__}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise _Mismatch("true or false")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 (PyYAML) reads 1e-5 as a string; YAML 1.2 and DVC's -S as a number
    if not isinstance(value, hint) or isinstance(value, bool):
        raise _Mismatch(hint.__name__)
    return value


def _check_range(cls: type, name: str, value: Any, source: str) -> None:
    """``ParamsError`` unless every number of ``value`` lies in the field's [minimum, maximum]."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    low, high = field.metadata.get("minimum"), field.metadata.get("maximum")
    for number in value if isinstance(value, tuple) else (value,):
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            continue
        if number != number or (low is not None and number < low) or (high is not None and number > high):
            bounds = " and ".join(text for text in (f">= {low}" if low is not None else "",
                                                     f"<= {high}" if high is not None else "") if text)
            raise ParamsError(f"{source}: '{name}' must be {bounds or 'a number'}, got {value!r}")


def coerce(cls: type, name: str, value: Any, source: str) -> Any:
    """Check ``value`` against the declared type and range of ``cls.name``; lists become tuples.

    Fixed choices (``Literal``) must be one of their values; a union (``Literal[...] | tuple``)
    takes the first alternative that fits. Errors (``ParamsError``) name ``source`` and the key."""
    hint = _field_type(cls, name)
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    alternatives = [a for a in typing.get_args(hint) if a is not type(None)] if is_union else [hint]
    if value is None:
        if is_union and type(None) in typing.get_args(hint):
            return None
        raise ParamsError(f"{source}: '{name}' may not be null")
    expected = []
    for alternative in alternatives:
        try:
            result = _coerce_scalar(alternative, value)
        except _Mismatch as mismatch:
            expected.append(mismatch.args[0])
            continue
        _check_range(cls, name, result, source)
        return result
    raise ParamsError(f"{source}: '{name}' must be {' or '.join(expected)}, got {value!r}")


def checked(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """Type-check a mapping against ``cls``, refusing unknown keys so that typos do not pass."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ParamsError(f"{source}: unknown parameter(s) {unknown}; known: {sorted(known)}")
    return {k: coerce(cls, k, v, source) for k, v in values.items()}


YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


def duplicate_key(node: yaml.Node | None, where: str = "") -> tuple[str, int, int] | None:
    """The first key that a mapping under ``node`` (a composed YAML document) holds twice, as
    (dotted key, first line, second line); PyYAML would silently keep the last value. Keys
    merged in with ``<<`` may be overridden, as YAML allows."""
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = f"{where}.{key_node.value}" if where else str(key_node.value)
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != YAML_MERGE_TAG:
                if key in lines:
                    return key, lines[key], key_node.start_mark.line + 1
                lines[key] = key_node.start_mark.line + 1
            if (found := duplicate_key(value_node, key)) is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            if (found := duplicate_key(item, f"{where}[{index}]")) is not None:
                return found
    return None


class _FromFile:
    """``load``'s default preset: the one the params file names."""

    def __repr__(self) -> str:
        return "FROM_FILE"


FROM_FILE = _FromFile()
PRESET_KEY = "preset"  # the top-level key of params.yaml that names a preset


def preset_changes(name: Any, section: str, where: str) -> dict[str, Any]:
    """The keys preset ``name`` replaces in ``section`` with their values (none for ``name`` None or
    a section no preset names); ``ParamsError`` naming ``where`` and the allowed names for an
    unknown name."""
    if name is None:
        return {}
    if not isinstance(name, str) or name not in PRESETS:
        raise ParamsError(f"{where}: '{PRESET_KEY}' must be one of {list(PRESETS)} or null (no preset), got {name!r}")
    return dict(PRESETS[name].get(section, {}))


def field_default(field: dataclasses.Field) -> Any:
    """The default value of a dataclass field (its default, or a fresh value of its factory);
    TypeError for a field without one."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"field {field.name!r} has no default")


def _default(cls: type, name: str) -> Any:
    return field_default(next(f for f in dataclasses.fields(cls) if f.name == name))


def replaced_by_preset(cls: type, file_values: Mapping[str, Any], changes: Mapping[str, Any],
                       source: str) -> list[str]:
    """``key value -> preset value`` for each key the file sets to neither the built-in default nor
    the preset's value, which the preset replaces (a ``-S section.key=...`` that has no effect)."""
    replaced = []
    for key, value in changes.items():
        if key not in file_values:
            continue
        mine, theirs = coerce(cls, key, file_values[key], source), coerce(cls, key, value, source)
        if mine != theirs and mine != _default(cls, key):
            replaced.append(f"{key} {mine!r} -> {theirs!r}")
    return replaced


def load(cls: type, section: str, path: str | Path = "params.yaml",
         overrides: dict[str, Any] | None = None, preset: str | _FromFile | None = FROM_FILE) -> Any:
    """Read ``section`` of the params file (missing file or section: defaults), replace the keys its
    preset names (the file's top-level ``preset``, or ``preset`` when given: ``--preset``), then
    apply ``overrides`` (command-line options, which win over the preset).
    A key written twice anywhere in the file is an error naming it and both lines."""
    path = Path(path)
    values: dict[str, Any] = {}
    file_preset = None
    if path.exists():
        text = path.read_text()
        try:
            twice = duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
            document = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
        if twice is not None:
            raise ParamsError(f"{path}: key '{twice[0]}' appears twice, on lines {twice[1]} and {twice[2]} "
                              "(YAML readers would silently keep the last); keep one")
        if not isinstance(document, dict):
            raise ParamsError(f"{path}: top level must be a mapping of stage sections")
        section_values = document.get(section) or {}
        if not isinstance(section_values, dict):
            raise ParamsError(f"{path}: section '{section}' must be a mapping")
        values.update(section_values)
        file_preset = document.get(PRESET_KEY)
    from_file = isinstance(preset, _FromFile)
    name = file_preset if from_file else preset
    changes = preset_changes(name, section, str(path) if from_file else "--preset")
    source = f"{path}:{section} (with command-line overrides)"
    if changes:
        source = f"{path}:{section} (with preset {name} and command-line overrides)"
        if replaced := replaced_by_preset(cls, values, changes, source):
            warnings.warn(f"{path}:{section}: preset {name} replaces {', '.join(replaced)} (a stage's command-line "
                          f"options win over a preset, params.yaml values do not)", stacklevel=1)
    values.update(changes)
    values.update(overrides or {})
    return cls(**checked(cls, values, source))
