"""``FineTuneModule``: the maths of one fine-tuning step, over any samtune adapter.

The module holds the model, the loss and the metrics; the Trainer (``train/run.py``) holds the
engineering: devices, precision, accumulation, checkpoints, logs. One step:

1. features: from the embedding cache when it holds them (the encoder is frozen), else the
   encoder (under ``no_grad`` when frozen);
2. one decoder call per prompt group (objects of every image with the same prompt shape);
3. logits upsampled to the model input frame and compared with the targets, padding excluded;
4. optional correction rounds: a click from each object's error region plus the previous
   low-res logits as the mask prompt, as SAM and SAM 2 train.

Every random draw inside a step comes from a generator seeded with (seed, global step), so a
resumed run repeats the steps an uninterrupted one takes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from samtune.config.train import RunConfig
from samtune.data.batch import Batch
from samtune.errors import NonFiniteError, SamtuneWarning
from samtune.models.adapter import Adapter, Features, Prompts
from samtune.models.class_head import IGNORE, attach_class_head, categories_json
from samtune.models.fast import apply_fast_options
from samtune.models.lora import add_lora, component
from samtune.prompts import correction_clicks
from samtune.runs import base_model
from samtune.train.cache import EmbeddingCache
from samtune.train.callbacks import TRAINED_KEY
from samtune.train.losses import SegmentationLoss, class_loss
from samtune.metrics import MaskMetrics
from samtune.train.prompt_reach import kinds_drawn, prompt_reach

GROUPS = ("image_encoder", "prompt_encoder", "mask_decoder")
#: The class head's learning rate over ``train.optimizer.lr`` unless ``group_lr`` sets it: the
#: head starts from random weights, which at a fine-tuning rate barely move in a short run
#: (LiteMedSAM, 100 steps at 3e-4: box-prompt class accuracy 0.50 against a chance of 0.28)
CLASS_HEAD_LR_SCALE = 10.0
#: What ``val/<name>`` logs, from :class:`MaskMetrics`' ``compute()``.
VAL_METRICS = {"iou": "mask_iou", "dice": "mask_dice", "pixel_accuracy": "mask_pixel_accuracy",
               "boundary_f1": "mask_boundary_f1", "image_iou": "image_iou",
               "image_dice": "image_dice"}


class FineTuneModule(L.LightningModule):
    """Fine-tunes ``config.model`` with the losses, freezing and LoRA of ``config``.

    ``categories`` (id -> name): the classes of ``model.class_head``, from the training
    data; saved with the checkpoints' hyper-parameters, so a restored run has the same head.
    """

    def __init__(self, config: RunConfig, adapter: Adapter | None = None,
                 categories: Mapping[int, str] | None = None) -> None:
        super().__init__()
        self.config = config
        if config.model.class_head and not categories:
            raise ValueError("model.class_head needs the training data's categories")
        hparams = {"config": config.model_dump(mode="json")}
        if config.model.class_head:
            hparams["categories"] = categories_json(categories)
        self.save_hyperparameters(hparams)
        # Random parts drawn under the run's seed: ``samtune.runs.base_model`` rebuilds them.
        self.adapter = adapter if adapter is not None else base_model(config)
        self._configure_trainable()
        if config.model.class_head:
            with torch.random.fork_rng(devices=[]):  # the head's init: the run's seed as well
                torch.manual_seed(config.seed)
                attach_class_head(self.adapter, categories)
            self.class_accuracy = MulticlassAccuracy(len(categories), average="micro",
                                                     ignore_index=IGNORE)
        train = config.train  # after LoRA, which the fused attention calls through
        apply_fast_options(self.adapter, train.fused_attention, train.gradient_checkpointing,
                           train.compile)
        loss = config.train.loss
        self.loss = SegmentationLoss(
            loss.weights, focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma,
            dice_smooth=loss.dice_smooth, iou_smooth=loss.iou_smooth,
            iou_tanh_scale=loss.iou_tanh_scale, iou_head_kind=loss.iou_head,
        )
        self.val_metrics = MaskMetrics()
        self.cache: EmbeddingCache | None = None
        self.encoder_calls = 0
        self.skipped_batches = 0
        self._drop_update = False

    # --- trainable parameters -------------------------------------------------------------
    def _configure_trainable(self) -> None:
        model_cfg = self.config.model
        self.adapter.requires_grad_(False)
        for group in GROUPS:
            if group not in model_cfg.freeze:
                component(self.adapter, group).requires_grad_(True)
        lora = model_cfg.lora
        if lora is not None:
            add_lora(self.adapter, list(lora.targets), lora.rank, lora.alpha, lora.dropout)
        # SAM 2's projections of the high-resolution features run inside ``encode``.
        groups = self.adapter.parameter_groups()
        #: fixed from here on; read on every step to choose the cache or the encoder. Decided by
        #: the config, not by ``requires_grad``: SAM 2's ``conv_s0``/``conv_s1`` sit in the
        #: decoder module but belong to the encoder group, and must freeze with the encoder.
        self.encoder_trainable = "image_encoder" not in model_cfg.freeze or (
            lora is not None and "image_encoder" in lora.targets)
        for p in groups["image_encoder"].values():
            if not self.encoder_trainable:
                p.requires_grad_(False)
        for p in groups["other"].values():
            p.requires_grad_(False)
        # an item without objects trains as a negative with no prompt: the run's data decides
        # whether one comes, so every run counts that path (an export rebuilds the same module)
        reach = prompt_reach(self.adapter, kinds_drawn(
            self.config.prompts, self.config.train.correction_rounds, negatives=True))
        params = dict(self.adapter.model.named_parameters())
        for name in reach.unreached:  # no prompt kind of this run could ever train them
            params[name].requires_grad_(False)
        #: trainable tensors that only some of the run's prompt kinds reach: any one step may
        #: leave them without a gradient (DDP then has to look for unused parameters)
        self.step_varying_parameters = reach.varying
        if not any(p.requires_grad for p in self.adapter.parameters()):
            raise ValueError("model.freeze leaves nothing to train; remove a group from it or add lora")

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors training changes, under the names of the (possibly LoRA-wrapped) official
        module: trainable parameters (LoRA A/B, trained official tensors) and the running
        statistics of batch norms that update in training mode (TinyViT's, when its encoder
        trains)."""
        model = self.adapter.model
        out = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        was_training = self.training
        self.train()  # the modes training runs in: frozen components stay in eval
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
                out.update({f"{name}.{b}": t.detach() for b, t in m.named_buffers(recurse=False)
                            if t is not None})
        self.train(was_training)
        return out

    def train(self, mode: bool = True) -> FineTuneModule:
        """Frozen components stay in eval mode (TinyViT's batch norms must not update), and so
        do all batch norms unless ``model.batch_norm`` is ``update``."""
        super().train(mode)
        if mode:
            for group in GROUPS:
                module = component(self.adapter, group)
                if not any(p.requires_grad for p in module.parameters()):
                    module.eval()
            if self.config.model.batch_norm == "frozen":
                for m in self.adapter.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    # --- the step -------------------------------------------------------------------------
    def features(self, batch: Batch) -> Features:
        if self.cache is not None and not self.encoder_trainable:
            return self._cached_features(batch)
        self.encoder_calls += 1
        if self.encoder_trainable:
            return self.adapter.encode(batch.images)
        with torch.no_grad():
            return self.adapter.encode(batch.images)

    def _cached_features(self, batch: Batch) -> Features:
        found = self.cache.get_many(batch.image_ids)
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            self.encoder_calls += 1
            with torch.no_grad():
                fresh = self.adapter.encode(batch.images[missing])
            self.cache.put_many([batch.image_ids[i] for i in missing], fresh)
            for j, i in enumerate(missing):
                found[i] = fresh.select(torch.tensor([j], device=fresh.image_embed.device))
        dtype = batch.images.dtype
        return Features.cat([f.to(self.device, dtype) for f in found])

    def forward_objects(
        self, batch: Batch, features: Features, generator: torch.Generator | None = None,
        rounds: int = 0,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(logits (N, K, S, S), iou (N, K), low_res (N, K, h, w), class logits (N, K, C) or
        None without a class head) per round, objects in batch order; round 0 uses the
        batch's prompts, each later round adds one click."""
        n = batch.num_objects
        head = self.adapter.class_head
        outputs = []
        groups = [(objects, prompts) for objects, prompts in batch.prompt_groups]
        for r in range(rounds + 1):
            parts, order = [], []
            for objects, prompts in groups:
                multimask = r == 0 and self.multimask(prompts)
                if head is None:
                    parts.append(self.adapter.decode(features, prompts, multimask_output=multimask))
                else:
                    low, iou, tokens = self.adapter.decode_tokens(features, prompts, multimask)
                    parts.append((low, iou, head(tokens, features.image_embed, low,
                                                 prompts.image_index)))
                order.append(objects)
            k = max(part[0].shape[1] for part in parts)
            index = torch.cat(order)
            # where other prompts of the batch gave k candidates, one stands for k identical ones:
            # the loss and the IoU head see the same values as for the one
            low, iou, *classes = (self._in_batch_order([p[i] for p in parts], index, n, k)
                                  for i in range(len(parts[0])))
            logits = self.upsample(low)
            outputs.append((logits, iou, low, classes[0] if classes else None))
            if r < rounds:
                groups = self._correct(groups, batch, logits, iou, low, generator)
        return outputs

    def _in_batch_order(self, parts: list[torch.Tensor], index: torch.Tensor, n: int,
                        k: int) -> torch.Tensor:
        """Per-group (n_g, k_g, ...) outputs -> one (n, k, ...) tensor in batch order, a single
        candidate standing for k."""
        parts = [p.expand(-1, k, *p.shape[2:]) for p in parts]
        out = torch.empty((n, k, *parts[0].shape[2:]), device=self.device, dtype=parts[0].dtype)
        out[index] = torch.cat(parts)
        return out

    def multimask(self, prompts: Prompts) -> bool:
        """Whether these prompts get three candidates in the first round
        (``train.multimask_output``; ``auto``: one click and nothing else)."""
        setting = self.config.train.multimask_output
        if setting != "auto":
            return setting
        return (prompts.boxes is None and prompts.mask_inputs is None and prompts.points is not None
                and prompts.points.shape[1] == 1)

    def upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        size = self.adapter.image_size
        return F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)

    def _correct(self, groups, batch: Batch, logits, iou, low, generator):
        """Next round's prompts: each object's prompts plus one click from its error region
        (:func:`~samtune.prompts.correction_clicks`, ``prompts.click_mode``),
        and its chosen low-res logits (detached) as the mask prompt."""
        best = iou.argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        pred = logits[rows, best] > 0
        clicks, labels = correction_clicks(pred, batch.targets, self.valid_mask(batch), generator,
                                           self.config.prompts.click_mode)
        previous = low[rows, best][:, None].detach()
        out = []
        for objects, p in groups:
            new_pts = clicks[objects][:, None]
            new_lbl = labels[objects][:, None].to(torch.int)
            points = new_pts if p.points is None else torch.cat([p.points, new_pts], dim=1)
            point_labels = new_lbl if p.point_labels is None else torch.cat([p.point_labels, new_lbl], 1)
            out.append((objects, Prompts(p.image_index, points, point_labels, p.boxes, previous[objects])))
        return out

    def valid_mask(self, batch: Batch) -> torch.Tensor:
        """(N, S, S) True inside each object's image content, False on padding."""
        size = self.adapter.image_size
        hw = torch.tensor(batch.input_sizes, device=self.device)[batch.object_image]
        ys = torch.arange(size, device=self.device)
        return (ys[None, :, None] < hw[:, 0, None, None]) & (ys[None, None, :] < hw[:, 1, None, None])

    def _step(self, batch: Batch, stage: str):
        generator = None
        if self.config.train.correction_rounds and stage == "train":
            generator = torch.Generator(device=self.device).manual_seed(
                self.config.seed * 1_000_003 + int(self.global_step))
        features = self.features(batch)
        rounds = self.config.train.correction_rounds if stage == "train" else 0
        valid = self.valid_mask(batch)
        outputs = self.forward_objects(batch, features, generator, rounds)
        low_res = stage == "train" and self.config.train.loss_resolution == "low_res"
        targets, loss_valid = (self.low_res_targets(batch, valid) if low_res else (batch.targets, valid))
        num_masks = (objects_across_processes(batch.num_objects, self.device)
                     if stage == "train" else None)
        classes = self.class_targets(batch)
        total, parts = 0.0, {}
        for logits, iou, low, class_logits in outputs:
            out = self.loss(low if low_res else logits, targets, iou, valid=loss_valid,
                            num_masks=num_masks)
            terms = dict(out.parts)
            step_total = out.total
            if class_logits is not None:
                terms["class"] = class_loss(class_logits, classes, num_masks)
                step_total = step_total + self.config.train.loss.class_weight * terms["class"]
            total = total + step_total / len(outputs)
            for k, v in terms.items():
                parts[k] = parts.get(k, 0.0) + v.detach() / len(outputs)
        return total, parts, outputs[0], valid

    def class_targets(self, batch: Batch) -> torch.Tensor | None:
        """(N,) class index of each object for the class head; :data:`IGNORE` for an object
        without a category the head knows, and for the empty target of a negative item."""
        head = self.adapter.class_head
        if head is None:
            return None
        classes = head.targets(batch.category_ids.to(self.device))
        empty = ~batch.targets.flatten(1).any(dim=1)
        return torch.where(empty, torch.full_like(classes, IGNORE), classes)

    def low_res_targets(self, batch: Batch, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets and valid pixels at the decoder's low-res size (area fraction > 0.5), for a
        loss on the raw decoder logits: 16x fewer pixels than the 1024 input frame."""
        size = self.adapter.mask_input_size

        def shrink(m: torch.Tensor) -> torch.Tensor:
            return F.interpolate(m[:, None].float(), size, mode="area")[:, 0] > 0.5

        return shrink(batch.targets), shrink(valid)

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor] | None:
        """The loss, and each object's chosen low-res logits (``low_res``, detached) for the
        callbacks that keep them (``train.callbacks.PreviousLogits``)."""
        # every training item has an object: one without trains as a negative (datamodule)
        total, parts, (logits, iou, low, _), _ = self._step(batch, "train")
        finite = bool(torch.isfinite(total.detach()).all())
        if not self._finite_everywhere(finite):
            self.nonfinite(f"loss is {float(total.detach())}" if not finite
                           else "loss is not finite in another process")
            if self.trainer.world_size == 1:
                return None  # Lightning skips the backward pass and the optimizer step
            # Lightning refuses a skipped step under DDP: every process runs its backward
            # (the gradient all-reduce needs them all) and the update is dropped instead
            self._drop_update = True
            return {"loss": total}
        size = len(batch)
        # averaged over the processes under DDP: the loss of the whole step's batch
        self.log("train/loss", total, prog_bar=True, batch_size=size, sync_dist=True)
        for k, v in parts.items():
            self.log(f"train/loss_{k}", v, batch_size=size)
        best = iou.argmax(dim=1)
        return {"loss": total, "low_res": low[torch.arange(len(best)), best].detach()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """List the trained tensors, for the sidecar ``RunCheckpointIO`` writes."""
        checkpoint[TRAINED_KEY] = sorted(self.trainable_state())

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if batch.num_objects == 0:
            return
        total, parts, (logits, iou, _, class_logits), valid = self._step(batch, "val")
        size = len(batch)
        self.log("val/loss", total, batch_size=size, sync_dist=True)
        for k, v in parts.items():
            self.log(f"val/loss_{k}", v, batch_size=size, sync_dist=True)
        best = iou.argmax(dim=1)  # the candidate inference would pick
        rows = torch.arange(len(best))
        pred = logits[rows, best] > 0
        self.val_metrics.update(pred, batch.targets, valid, batch.object_image)
        if class_logits is not None:
            self.class_accuracy.update(class_logits[rows, best], self.class_targets(batch))

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics.update_count == 0:
            return
        values = self.val_metrics.compute()
        for name, key in VAL_METRICS.items():
            self.log(f"val/{name}", values[key], prog_bar=name == "iou")
        self.val_metrics.reset()
        if self.adapter.class_head is not None:
            self.log("val/class_accuracy", self.class_accuracy.compute())
            self.class_accuracy.reset()

    # --- divergence -----------------------------------------------------------------------
    def _finite_everywhere(self, finite: bool) -> bool:
        """Whether the loss is finite in every process: one decision for all of them, so a
        non-finite loss in one stops or skips the step in each (a process that went on alone
        would wait for the others in the gradient all-reduce)."""
        if self.trainer.world_size == 1:
            return finite
        return self.trainer.strategy.reduce_boolean_decision(finite, all=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        """A non-finite gradient never reaches the weights, nor does the step of a loss that
        was not finite in some process under DDP. (With ``16-mixed`` the gradient scaler owns
        this: it skips such steps and lowers its scale.)"""
        drop, self._drop_update = self._drop_update, False
        if self.config.train.precision == "16-mixed":
            return
        if drop:
            optimizer.zero_grad(set_to_none=True)  # the step then changes nothing
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all():
            self.nonfinite("gradient is not finite")
            optimizer.zero_grad(set_to_none=True)  # the step then changes nothing

    def nonfinite(self, what: str) -> None:
        """Stop with an error naming the step, or (``on_nonfinite: skip``) warn and count."""
        t = self.config.train
        step = int(self.global_step) + 1
        if t.on_nonfinite == "skip":
            self.skipped_batches += 1
            if self.skipped_batches <= t.max_skipped_batches:
                warnings.warn(f"step {step}: the training {what}; batch skipped "
                              f"({self.skipped_batches} of at most {t.max_skipped_batches})",
                              SamtuneWarning, stacklevel=2)
                return
            what += f" for the {self.skipped_batches}th time (train.max_skipped_batches)"
        raise NonFiniteError(
            f"step {step}: the training {what}: training diverged and stopped; the checkpoints "
            "hold the last finite weights. Lower train.optimizer.lr, set "
            "train.optimizer.grad_clip, or set train.on_nonfinite=skip")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """On resume, keep the schedule this config builds (over its ``max_steps``) rather
        than the one saved: a longer ``max_steps`` extends the schedule instead of training
        on at the old schedule's final rate."""
        saved = (checkpoint.get("hyper_parameters") or {}).get("config", {})
        before = (saved.get("train") or {}).get("max_steps")
        now = self.config.train.max_steps
        for state in checkpoint.get("lr_schedulers") or []:
            if "lr_lambdas" in state:
                state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
        self._resumed = True
        if before is not None and before != now and self.config.train.schedule.name != "constant":
            name = self.config.train.schedule.name
            warnings.warn(f"train.max_steps {before} -> {now}: the {name} learning-rate "
                          f"schedule now spans {now} steps", SamtuneWarning,
                          stacklevel=2)

    def on_train_start(self) -> None:
        """After a resume, the rate the schedule gives at the restored step (the optimizer
        state carries the rate of the schedule it was saved with)."""
        if not getattr(self, "_resumed", False):
            return
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs,
                                           sched.lr_lambdas, strict=True):
                    group["lr"] = base * fn(sched.last_epoch)

    # --- optimizer ------------------------------------------------------------------------
    def configure_optimizers(self):
        return self.optimizer_and_schedule(int(self.trainer.estimated_stepping_batches))

    def optimizer_and_schedule(self, total_steps: int) -> dict:
        """The optimizer and Lightning's ``lr_scheduler`` entry for a run of ``total_steps``
        optimizer steps; a loop outside Lightning (``bench/recipes.py``) uses it as is."""
        opt = self.config.train.optimizer
        groups = []
        for name, params in self.adapter.parameter_groups().items():
            trainable = [p for p in params.values() if p.requires_grad]
            if trainable:
                groups.append({"params": trainable, "lr": opt.group_lr.get(name, opt.lr), "name": name})
        if self.adapter.class_head is not None:  # from scratch: CLASS_HEAD_LR_SCALE x lr
            lr = opt.group_lr.get("class_head", opt.lr * CLASS_HEAD_LR_SCALE)
            groups.append({"params": list(self.adapter.class_head.parameters()), "lr": lr,
                           "name": "class_head"})
        optimizer = opt.build(groups)
        return {"optimizer": optimizer,
                "lr_scheduler": self.config.train.schedule.build(optimizer, total_steps)}


def objects_across_processes(n: int, device: torch.device | str) -> torch.Tensor:
    """The mean object count per process, all-reduced under DDP (``n`` alone otherwise), at
    least 1: the loss of each process is its objects' sum divided by it, as SAM 2's trainer
    normalises, so DDP's gradient average weighs every object of the global batch alike
    whatever the count on each process."""
    count = torch.tensor(float(n), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        count = count / torch.distributed.get_world_size()
    return count.clamp_min(1.0)
