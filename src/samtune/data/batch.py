"""``Batch``: several images, a variable number of objects each, ready for the adapter.

:class:`Collator` turns the dataset's :class:`Item` records (an augmented Sample with one
:class:`~samtune.prompts.ObjectPrompt` per object) into one :class:`Batch`: images
preprocessed by the model's :class:`~samtune.models.preprocess.Preprocessor`, every target
mask and every prompt mapped into the model input frame by that same object, so a point, a
box and a target line up whatever the family's resize. Objects are flattened across images
(``object_image`` says whose each is) and grouped by prompt structure
(:func:`~samtune.prompts.group_by_structure`), because one
:class:`~samtune.models.adapter.Prompts` record must hold objects with the same prompt shape:
``prompt_groups`` is what the trainer hands to ``adapter.decode``, one call per group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from samtune.data.prompts import mask_logits_from_targets
from samtune.data.sample import Sample
from samtune.models.adapter import Adapter, Prompts
from samtune.models.preprocess import Preprocessor
from samtune.prompts import ObjectPrompt, group_by_structure


@dataclass
class Item:
    """One dataset item: an augmented Sample, its objects' prompts (original pixels), the
    dataset index it came from and each object's mask key (for the previous-logits store)."""

    sample: Sample
    prompts: list[ObjectPrompt]
    sample_index: int
    mask_keys: list[str] = field(default_factory=list)


class PromptGroup(NamedTuple):
    """Objects (k,) long indices into the batch's objects, and their prompts (model pixels)."""

    objects: torch.Tensor
    prompts: Prompts


@dataclass
class Batch:
    """B images and N objects in the model input frame (S = the model's input side).

    - ``images`` (B, 3, S, S) float32, preprocessed; ``image_ids`` a content key per image
      (sha1 of its pixels, for the embedding cache); ``sample_indices`` (B,) long dataset
      indices; ``original_sizes`` and ``input_sizes`` (h, w) per image (for ``postprocess``).
    - ``targets`` (N, S, S) bool: each object's mask, resized like its image, padding False;
      ``object_image`` (N,) long image of each object; ``category_ids`` (N,) long (-1 when
      the source has none); ``object_ids`` (N,) long ids within their Sample; ``mask_keys``
      one content key per object.
    - ``prompt_groups``: (object indices, ``Prompts``) pairs covering every object once.
    """

    images: torch.Tensor
    image_ids: list[str]
    sample_indices: torch.Tensor
    original_sizes: list[tuple[int, int]]
    input_sizes: list[tuple[int, int]]
    targets: torch.Tensor
    object_image: torch.Tensor
    category_ids: torch.Tensor
    object_ids: torch.Tensor
    mask_keys: list[str]
    prompt_groups: list[PromptGroup]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_objects(self) -> int:
        return self.targets.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        groups = [
            PromptGroup(move(objects), Prompts(move(p.image_index), move(p.points),
                                               move(p.point_labels), move(p.boxes),
                                               move(p.mask_inputs)))
            for objects, p in self.prompt_groups
        ]
        return Batch(
            move(self.images), self.image_ids, move(self.sample_indices), self.original_sizes,
            self.input_sizes, move(self.targets), move(self.object_image),
            move(self.category_ids), move(self.object_ids), self.mask_keys, groups,
        )


def image_key(image: np.ndarray) -> str:
    """sha1 of an image's pixels and shape: equal keys mean equal encoder input."""
    a = np.ascontiguousarray(image)
    return hashlib.sha1(a.tobytes() + str(a.shape).encode()).hexdigest()


class Collator:
    """list[Item] -> :class:`Batch`, in the data-loader workers (picklable).

    ``mask_input_size`` is the decoder's low-res size (``adapter.mask_input_size``), the
    size of ``mask`` prompts (see :func:`~samtune.data.prompts.mask_logits_from_targets`).
    """

    def __init__(self, preprocessor: Preprocessor, mask_input_size: tuple[int, int]) -> None:
        self.preprocessor = preprocessor
        self.mask_input_size = tuple(mask_input_size)

    @classmethod
    def for_model(cls, model: Adapter) -> Collator:
        """The collator for ``model``'s preprocessing and mask input size."""
        return cls(model.preprocessor, model.mask_input_size)

    def __call__(self, items: Sequence[Item]) -> Batch:
        pre = self.preprocessor
        images, targets, object_image, categories, object_ids, keys = [], [], [], [], [], []
        mapped: list[ObjectPrompt] = []
        for b, item in enumerate(items):
            s = item.sample
            if len(item.prompts) != len(s):
                raise ValueError(f"{s.path}: {len(item.prompts)} prompts for {len(s)} objects")
            images.append(pre(s.image))
            targets.append(pre.resize_masks(s.object_masks()))
            object_image += [b] * len(s)
            categories += s.category_ids if s.category_ids is not None else [-1] * len(s)
            object_ids += list(s.object_ids)
            keys += item.mask_keys or [""] * len(s)
            mapped += [self._to_model_frame(p, s.size) for p in item.prompts]
        target = torch.cat(targets) if targets else torch.zeros(0, pre.size, pre.size, dtype=bool)
        obj_image = torch.as_tensor(object_image, dtype=torch.long)
        return Batch(
            images=torch.stack(images),
            image_ids=[image_key(item.sample.image) for item in items],
            sample_indices=torch.as_tensor([item.sample_index for item in items], dtype=torch.long),
            original_sizes=[item.sample.size for item in items],
            input_sizes=[pre.input_size(item.sample.size) for item in items],
            targets=target,
            object_image=obj_image,
            category_ids=torch.as_tensor(categories, dtype=torch.long),
            object_ids=torch.as_tensor(object_ids, dtype=torch.long),
            mask_keys=keys,
            prompt_groups=self._groups(mapped, obj_image, target),
        )

    def _to_model_frame(self, p: ObjectPrompt, size: tuple[int, int]) -> ObjectPrompt:
        pre = self.preprocessor
        return ObjectPrompt(
            kind=p.kind,
            points=None if p.points is None else pre.transform_coords(p.points, size).numpy(),
            point_labels=p.point_labels,
            box=None if p.box is None else pre.transform_boxes(p.box, size).numpy(),
            logits=p.logits,
            mask_logit=p.mask_logit,
        )

    def _groups(
        self, prompts: list[ObjectPrompt], object_image: torch.Tensor, targets: torch.Tensor
    ) -> list[PromptGroup]:
        return [self._group(idx, [prompts[i] for i in idx], object_image, targets)
                for idx in group_by_structure(prompts)]

    def _group(
        self, idx: list[int], ps: list[ObjectPrompt], object_image: torch.Tensor,
        targets: torch.Tensor,
    ) -> PromptGroup:
        objects = torch.as_tensor(idx, dtype=torch.long)
        first = ps[0]
        points = labels = boxes = masks = None
        if first.points is not None and len(first.points):
            points = torch.as_tensor(np.stack([p.points for p in ps]), dtype=torch.float32)
            labels = torch.as_tensor(np.stack([p.point_labels for p in ps]), dtype=torch.int)
        if first.box is not None:
            boxes = torch.as_tensor(np.stack([p.box for p in ps]), dtype=torch.float32)
        if first.has_mask_input:
            masks = torch.stack([self._mask_input(p, targets[i]) for i, p in zip(idx, ps)])
        return PromptGroup(objects, Prompts(object_image[objects], points, labels, boxes, masks))

    def _mask_input(self, p: ObjectPrompt, target: torch.Tensor) -> torch.Tensor:
        """(1, h, w) mask input: stored logits, or the target as logits."""
        if p.logits is not None:
            logits = torch.as_tensor(p.logits, dtype=torch.float32)
            if tuple(logits.shape[-2:]) != self.mask_input_size:
                raise ValueError(f"stored logits are {tuple(logits.shape)}, the model's mask "
                                 f"input is {self.mask_input_size}; clear the logits store")
            return logits.reshape(1, *self.mask_input_size)
        return mask_logits_from_targets(target[None], self.mask_input_size, p.mask_logit)[0]
