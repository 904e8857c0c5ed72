"""The ``model`` and ``train`` sections of a run config, and the whole :class:`RunConfig`.

Every default is samtune's; the reference projects' settings are one field away, and the
example files in ``configs/`` spell them out (``configs/r3_vit_b_boxes.yaml`` is ``lightning_coco_boxes``'s recipe).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, Field, field_validator, model_validator

from samtune.config.data import DataConfig
from samtune.config.prompts import AugmentConfig, PromptConfig, validation_prompts
from samtune.config.section import Section as _Section

Group = Literal["image_encoder", "prompt_encoder", "mask_decoder"]


def _switch_word(value: Any) -> Any:
    """YAML 1.1 reads a bare ``off`` / ``on`` (and no / yes) as a boolean: take it as the word
    the user wrote, ``off`` or the setting's ``auto``."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    return value


def _as_text(value: Any) -> Any:
    """``precision: 32`` in YAML is the number 32: read it as the name ``"32"``."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: ``auto`` or ``off``; YAML's booleans (``off``, ``on``, ``false``, ``true``) read as those.
AutoOff = Annotated[Literal["auto", "off"], BeforeValidator(_switch_word)]


class LoraConfig(_Section):
    """Low-rank adapters (``peft``) on linear layers of the official modules."""

    targets: list[Literal["image_encoder", "mask_decoder"]] = ["image_encoder"]
    """Where: the image encoder's attention projections (qkv and proj) and/or the mask
    decoder's two-way transformer attention projections."""
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class ModelConfig(_Section):
    name: str = "sam_tiny"
    """A name from ``samtune models``."""
    checkpoint: str | None = None
    """A checkpoint file, ``auto`` (official weights from the cache, downloaded when
    missing), or null (random init: the tiny models)."""
    freeze: list[Group] = ["image_encoder", "prompt_encoder"]
    """Parameter groups kept fixed. The default trains the mask decoder on a frozen encoder
    (``mobilesam_boxes``, ``lightning_coco_boxes``, ``finestsam_points``); ``[]`` is a full fine-tune. With LoRA, the groups LoRA targets are
    frozen except for the adapters."""
    lora: LoraConfig | None = None
    """LoRA adapters; null for none."""
    batch_norm: Literal["frozen", "update"] = "frozen"
    """Batch-norm layers (TinyViT's, in MobileSAM and LiteMedSAM) keep their pretrained
    running statistics (``frozen``, eval mode; their weights still train where their group
    does), or re-estimate them from each training batch (``update``). Fine-tuning batches of a
    few images of one domain give noisy statistics: with ``update``, a LoRA run on LiteMedSAM
    lost a third of its held-out box IoU in 20 steps while its weights barely moved."""
    class_head: bool = False
    """Learn the training data's categories (COCO category ids): a small head on the
    decoder's mask tokens labels every mask, and ``predict`` (``--auto`` too) and ``eval``
    report each mask's category. Needs data with two categories or more. The head is
    samtune's own: ``export`` writes it as ``class_head.safetensors`` beside the official
    ``model.pth``, which stays as the official code loads it."""


# --- optimizers and schedules: one variant per name, each with its fields and its build -----


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _variant(variants: Sequence[type[BaseModel]], default: str, legacy: dict[str, Any]):
    """Before validation of a section whose ``name`` picks one of ``variants``: ``name``
    defaults to ``default``; a key that another variant owns, at the value every run config
    wrote out before the sections had variants (``legacy``), is dropped, so old run folders
    read back. Any other key the variant lacks is refused (``power`` under ``cosine``)."""
    by_name = {get_args(cls.model_fields["name"].annotation)[0]: cls for cls in variants}

    def pick(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        value = {"name": default, **value}
        cls = by_name.get(value["name"])
        if cls is None:
            return value  # the union names the valid ones
        return {k: v for k, v in value.items() if k in cls.model_fields or k not in legacy
                or _norm(v) != _norm(legacy[k])}

    return BeforeValidator(pick)


class _Optimizer(_Section):
    name: str
    """``adamw`` (default), ``adam`` or ``sgd``."""
    lr: float = Field(1e-4, gt=0)
    """Base learning rate (``lightning_coco_boxes``: 1e-4, ``mobilesam_boxes`` and ``labpics_sam2``: 2e-4, ``finestsam_points``: 4e-5)."""
    weight_decay: float = Field(1e-2, ge=0)
    group_lr: dict[Group | Literal["class_head"], float] = {}
    """Learning rate per parameter group, overriding ``lr`` (e.g. a smaller one for the
    image encoder in a full fine-tune); ``class_head`` for the head of ``model.class_head``
    (default 10 x ``lr``: it starts from random weights)."""
    grad_clip: float | None = Field(None, gt=0)
    """Clip the gradient norm to this value (Lightning's gradient_clip_val)."""

    @abstractmethod
    def build(self, groups: list[dict[str, Any]]):
        """The torch optimizer over parameter ``groups`` (each with its own ``lr``)."""


class AdamWConfig(_Optimizer):
    name: Literal["adamw"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)

    def build(self, groups):
        import torch

        return torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)


class AdamConfig(_Optimizer):
    name: Literal["adam"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)

    def build(self, groups):
        import torch

        return torch.optim.Adam(groups, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)


class SGDConfig(_Optimizer):
    name: Literal["sgd"] = "sgd"
    momentum: float = Field(0.9, ge=0)

    def build(self, groups):
        import torch

        return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)


_OPTIMIZERS = (AdamWConfig, AdamConfig, SGDConfig)
#: ``train.optimizer``: ``name`` (adamw, adam, sgd; default adamw) picks the variant
OptimizerConfig = Annotated[AdamWConfig | AdamConfig | SGDConfig, Field(discriminator="name"),
                            _variant(_OPTIMIZERS, "adamw",
                                     {"betas": (0.9, 0.999), "momentum": 0.9})]


class _Schedule(_Section):
    """A learning-rate schedule (:mod:`samtune.schedules`)."""

    def build(self, optimizer, total_steps: int) -> dict[str, Any]:
        """Lightning's ``lr_scheduler`` entry for ``optimizer`` over ``total_steps``
        optimizer steps."""
        from samtune.schedules import build_scheduler

        return build_scheduler(optimizer, self.name, total_steps, **self.schedule_params(total_steps))

    def schedule_params(self, total_steps: int) -> dict[str, Any]:
        return {"warmup_steps": self.warmup_steps}


class ConstantSchedule(_Schedule):
    """The base rate after an optional linear warmup."""

    name: Literal["constant"] = "constant"
    warmup_steps: int = Field(0, ge=0)


class CosineSchedule(_Schedule):
    """Warmup, then half a cosine down to ``eta_min`` at the last step."""

    name: Literal["cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    eta_min: float = Field(0.0, ge=0)
    """Final learning rate, absolute."""

    def schedule_params(self, total_steps):
        return {"warmup_steps": self.warmup_steps, "eta_min": self.eta_min}


class CosineRestartsSchedule(_Schedule):
    """``labpics_sam2``'s periodic cosine: cycles from the base rate down to ``eta_min``."""

    name: Literal["cosine_restarts"] = "cosine_restarts"
    warmup_steps: int = Field(0, ge=0)
    eta_min: float = Field(0.0, ge=0)
    """Floor learning rate, absolute."""
    period: int | None = Field(None, ge=1)
    """Steps per cycle (default: a tenth of training)."""

    def schedule_params(self, total_steps):
        return {"warmup_steps": self.warmup_steps, "eta_min": self.eta_min,
                "period": self.period or max(1, total_steps // 10)}


class PolySchedule(_Schedule):
    """``dlo_cables``'s warmup, then (1 - t/T)^``power`` down to ``eta_min``."""

    name: Literal["poly"] = "poly"
    warmup_steps: int = Field(0, ge=0)
    eta_min: float = Field(0.0, ge=0)
    """Final learning rate, absolute."""
    power: float = Field(0.9, gt=0)

    def schedule_params(self, total_steps):
        return {"warmup_steps": self.warmup_steps, "eta_min": self.eta_min, "power": self.power}


class StepSchedule(_Schedule):
    """``lightning_coco_boxes``'s warmup, then x``gamma`` at each of the ``milestones``."""

    name: Literal["step"] = "step"
    warmup_steps: int = Field(0, ge=0)
    milestones: list[float] = [0.66667, 0.86666]
    """Fractions of training."""
    gamma: float = Field(0.1, gt=0)

    def schedule_params(self, total_steps):
        return {"warmup_steps": self.warmup_steps, "milestones": tuple(self.milestones),
                "gamma": self.gamma}


class PlateauSchedule(_Schedule):
    """``finestsam_points``'s ReduceLROnPlateau on ``monitor`` (no warmup)."""

    name: Literal["plateau"] = "plateau"
    monitor: str = "val/iou"
    """The metric watched (mode follows the name: losses go down, the rest up)."""
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(10, ge=0)
    threshold: float = Field(1e-4, ge=0)
    cooldown: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)

    def build(self, optimizer, total_steps):
        from samtune.schedules import build_scheduler

        return build_scheduler(optimizer, "plateau", total_steps, monitor=self.monitor,
                               mode="min" if "loss" in self.monitor else "max",
                               factor=self.factor, patience=self.patience,
                               threshold=self.threshold, cooldown=self.cooldown,
                               min_lr=self.min_lr)


_SCHEDULES = (ConstantSchedule, CosineSchedule, CosineRestartsSchedule, PolySchedule,
              StepSchedule, PlateauSchedule)
#: ``train.schedule``: ``name`` picks the variant (default cosine): ``constant``, ``cosine``,
#: ``cosine_restarts``, ``poly``, ``step``, ``plateau``; each takes only its own fields
ScheduleConfig = Annotated[
    ConstantSchedule | CosineSchedule | CosineRestartsSchedule | PolySchedule | StepSchedule
    | PlateauSchedule,
    Field(discriminator="name"),
    _variant(_SCHEDULES, "cosine", {
        "warmup_steps": 0, "eta_min": 0.0, "period": None, "power": 0.9,
        "milestones": [0.66667, 0.86666], "gamma": 0.1, "monitor": "val/iou", "factor": 0.1,
        "patience": 10, "threshold": 1e-4, "cooldown": 0, "min_lr": 0.0}),
]


class LossConfig(_Section):
    weights: dict[Literal["focal", "dice", "bce", "iou", "iou_head"], float] = {
        "focal": 20.0, "dice": 1.0, "iou_head": 1.0}
    """SAM, ``lightning_coco_boxes``, ``finestsam_points``: focal 20, dice 1, iou_head 1. ``labpics_sam2``: dice 0.4, focal 12, iou_head 5, iou 2
    (with ``iou_tanh_scale: 3``). ``dlo_cables``: focal 20, dice 1. ``mobilesam_boxes``: bce 1, iou 1."""
    focal_alpha: float | None = 0.25
    focal_gamma: float = 2.0
    dice_smooth: float = 1.0
    iou_smooth: float = 0.0
    iou_tanh_scale: float | None = None
    iou_head: Literal["mse", "l1"] = "mse"
    class_weight: float = Field(1.0, ge=0)
    """Weight of the class head's cross-entropy (``model.class_head``), averaged over each
    object's candidate masks and normalised per mask as the mask terms."""


class CheckpointConfig(_Section):
    monitor: str = "val/iou"
    """Metric that picks ``best.ckpt`` (files are named like ``step=1200-val_iou=0.8312.ckpt``)."""
    mode: Literal["max", "min"] = "max"
    save_top_k: int = Field(1, ge=0)
    every_n_steps: int | None = Field(None, ge=1)
    """Also keep a checkpoint every N steps."""


class EarlyStoppingConfig(_Section):
    monitor: str = "val/iou"
    mode: Literal["max", "min"] = "max"
    patience: int = Field(5, ge=1)
    """Validations without improvement before stopping."""
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(_Section):
    batch_size: int = Field(2, ge=1)
    """Images per step and device; each image brings up to ``prompts.max_objects_per_image``
    objects."""
    val_batch_size: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    max_steps: int = Field(1000, ge=-1)
    """-1: bounded by ``max_epochs`` only."""
    max_epochs: int | None = Field(None, ge=1)
    accumulate_grad_batches: int = Field(1, ge=1)
    precision: Annotated[Literal["32", "16-mixed", "bf16-mixed", "32-true"],
                         BeforeValidator(_as_text)] = "32"
    """``16-mixed`` needs a GPU: on a CPU, which has no float16 autocast, the run says so and
    uses ``bf16-mixed``."""
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    """Passed to Lightning: ``ddp``, ``fsdp``, ``ddp_find_unused_parameters_true`` ..."""
    val_every_n_steps: int | None = Field(100, ge=1)
    """Validate every N optimizer steps (with ``accumulate_grad_batches: k``, every N x k
    batches); null to validate every ``val_every_n_epochs``."""
    val_every_n_epochs: int = Field(1, ge=1)
    validate_before_training: bool = True
    """Score the base model first, so the logs show what fine-tuning gained."""
    multimask_output: Literal["auto"] | bool = "auto"
    """Three candidate masks per object, the best back-propagated (SAM's rule), or one.
    ``auto``: three for a prompt of one click and nothing else, as SAM and SAM 2 train and as
    ``samtune eval``'s point mode and the automatic mask generator predict (they keep the
    candidate with the highest predicted IoU); one for boxes, several clicks and masks. With
    ``false``, one-click prompts train only the single-mask output, which those never read."""
    loss_resolution: Literal["input", "low_res"] = "input"
    """Where the training loss compares masks: ``input``, the decoder logits upsampled to the
    model input frame (1024x1024 for the official models; SAM 2's trainer does this), or
    ``low_res``, the raw decoder logits (256x256) against targets shrunk to that size: 16x
    fewer pixels, much faster and lighter when the encoder is cached. Validation metrics are
    always computed in the input frame."""
    correction_rounds: int = Field(0, ge=0)
    """Extra decoder passes per step, each adding a click from the previous error region
    (``prompts.click_mode``) and feeding the previous logits back as the mask prompt (SAM /
    SAM 2 training)."""
    optimizer: OptimizerConfig = AdamWConfig()
    schedule: ScheduleConfig = CosineSchedule()
    loss: LossConfig = LossConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    early_stopping: EarlyStoppingConfig | None = None
    cache_embeddings: AutoOff = "auto"
    """``auto``: when the image encoder is frozen and no augmentation touches the image,
    encode each image once and reuse the features from disk."""
    cache_dtype: Literal["float32", "bfloat16"] = "float32"
    """How cached features are stored: ``bfloat16`` halves disk and memory (a SAM ViT embedding
    is 4 MiB in float32) at about 3 significant digits."""
    cache_in_memory: AutoOff = "auto"
    """``auto``: after the fill pass, keep every image's features in memory so a step reads no
    files: on the GPU when they take under a third of its free memory, else in host memory
    when under a quarter of the RAM, else read from disk each time."""
    fused_attention: bool = True
    """Run SAM's and MobileSAM's attention (image encoder and mask decoder) through PyTorch's
    fused ``scaled_dot_product_attention``: same weights, same outputs up to float rounding,
    less memory. SAM 2 already uses it."""
    gradient_checkpointing: bool = False
    """Recompute each image-encoder block in the backward pass instead of keeping its
    activations: much less memory when the encoder trains (full fine-tune, encoder LoRA) for
    about a third more encoder compute. No effect on a frozen encoder."""
    compile: bool = False
    """``torch.compile`` the image encoder and the mask decoder (the first steps are slow
    while it compiles; needs a C++ compiler on CPU)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN or infinite loss or gradient: ``stop`` ends training with an error naming the
    step (the checkpoints keep the last finite weights); ``skip`` drops that batch's update
    with a warning, at most ``max_skipped_batches`` times."""
    max_skipped_batches: int = Field(10, ge=1)
    log_every_n_steps: int = Field(10, ge=1)
    progress_bar: bool = True


class RunConfig(_Section):
    """A whole run: what to train, on what, how; ``samtune train --print-config`` prints it."""

    name: str = "run"
    """The run folder is ``<output_dir>/<name>``."""
    output_dir: Path = Path("runs")
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig
    augment: AugmentConfig = AugmentConfig()
    prompts: PromptConfig = PromptConfig()
    val_prompts: PromptConfig = Field(default_factory=validation_prompts)
    """Prompts for validation, apart from the training ones: by default every object with its
    exact box or its centre point (:func:`~samtune.config.prompts.validation_prompts`); null
    reads as that default."""
    train: TrainConfig = TrainConfig()

    @field_validator("val_prompts", mode="before")
    @classmethod
    def _default_val_prompts(cls, v: Any) -> Any:
        return validation_prompts() if v is None else v

    @model_validator(mode="after")
    def _stop_condition(self) -> RunConfig:
        if self.train.max_steps == 0:
            raise ValueError("train.max_steps is 0: nothing would train; give a number of steps, "
                             "or -1 to train for train.max_epochs")
        if self.train.max_steps == -1 and self.train.max_epochs is None:
            raise ValueError("train.max_steps is -1 and train.max_epochs is null: training would never stop")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name
