"""The ``model`` and ``train`` sections of a run config, and the whole :class:`RunConfig`.

Every default is samtune's; the reference projects' settings are one field away, and the
example files in ``configs/`` spell them out (``configs/r3_vit_b_boxes.yaml`` is ``lightning_coco_boxes``'s recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from samtune.config.data import DataConfig
from samtune.config.prompts import AugmentConfig, PromptConfig, validation_prompts

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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class OptimizerConfig(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    """Base learning rate (``lightning_coco_boxes``: 1e-4, ``mobilesam_boxes`` and ``labpics_sam2``: 2e-4, ``finestsam_points``: 4e-5)."""
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0)
    """SGD only."""
    group_lr: dict[Group, float] = {}
    """Learning rate per parameter group, overriding ``lr`` (e.g. a smaller one for the
    image encoder in a full fine-tune)."""
    grad_clip: float | None = Field(None, gt=0)
    """Clip the gradient norm to this value (Lightning's gradient_clip_val)."""


class ScheduleConfig(_Section):
    name: Literal["constant", "cosine", "cosine_restarts", "poly", "step", "plateau"] = "cosine"
    """``cosine``: warmup then cosine to ``eta_min``; ``cosine_restarts``: ``labpics_sam2``'s periodic
    cosine; ``poly``: ``dlo_cables``'s warmup then (1 - t/T)^power; ``step``: ``lightning_coco_boxes``'s warmup then x``gamma``
    at ``milestones`` (fractions of training); ``plateau``: ``finestsam_points``'s ReduceLROnPlateau on
    ``monitor``."""
    warmup_steps: int = Field(0, ge=0)
    eta_min: float = Field(0.0, ge=0)
    """Final (cosine) or floor learning rate, absolute."""
    period: int | None = Field(None, ge=1)
    """cosine_restarts: steps per cycle (default: a tenth of training)."""
    power: float = Field(0.9, gt=0)
    milestones: list[float] = [0.66667, 0.86666]
    gamma: float = Field(0.1, gt=0)
    monitor: str = "val/iou"
    """plateau: the metric watched (mode follows the name: losses go down, the rest up)."""
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(10, ge=0)
    threshold: float = Field(1e-4, ge=0)
    cooldown: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)


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
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
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
