"""Several sources in one training set, and objects pasted on background images (``dlo_cables``).

:class:`MixedSource` draws ``percentage`` of each source's images afresh every epoch
(``resample(epoch, seed)``, the same draw for the same seed and epoch), as ``dlo_cables``'s
``MixedCableDataset.resample`` does. Both also offer a stateless ``at(epoch, index)`` for
loaders that hand the epoch to the dataset with each index. :class:`CompositeSource` cuts each sample's objects out
by their masks and pastes them on a random background image with ``dlo_cables``'s augmentations
(torchvision.transforms.v2), also deterministic per seed, epoch and index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from samtune.config.data import CompositeConfig, DataConfig, SourceConfig
from samtune.config.prompts import ColorJitterConfig
from samtune.data.detect import detect_layout, open_source
from samtune.data.images import IMAGE_SUFFIXES, read_image_rgb
from samtune.data.sample import Sample
from samtune.errors import SamtuneError


class MixedSource(Sequence[Sample]):
    """The concatenation of ``int(len(source) * percentage)`` images drawn without
    replacement from each source (at least one from a non-empty source), drawn afresh for
    every epoch. A percentage of 1 takes every image.

    :meth:`at` (epoch, index) is stateless, for loaders that pass the epoch with each index;
    indexing uses the epoch last set by :meth:`resample` / :meth:`set_epoch`.
    """

    def __init__(self, sources: Sequence[Sequence[Sample]], percentages: Sequence[float],
                 seed: int = 0) -> None:
        if len(sources) != len(percentages):
            raise ValueError("one percentage per source")
        self.sources = list(sources)
        self.percentages = list(percentages)
        self.seed = seed
        self.epoch = 0
        self.name = "+".join(getattr(s, "name", "?") for s in self.sources)
        self._drawn: tuple[tuple[int, int], list[tuple[int, int]]] | None = None

    def draw(self, epoch: int, seed: int | None = None) -> list[tuple[int, int]]:
        """(source, index) pairs of ``epoch``'s images; the same seed and epoch give the same
        draw (the last one is kept)."""
        seed = self.seed if seed is None else seed
        if self._drawn is not None and self._drawn[0] == (seed, epoch):
            return self._drawn[1]
        rng = np.random.default_rng([seed, epoch])
        picked = []
        for k, (source, share) in enumerate(zip(self.sources, self.percentages)):
            n = len(source)
            take = n if share >= 1 or n == 0 else min(n, max(1, int(n * share)))
            chosen = range(n) if take == n else np.sort(rng.choice(n, size=take, replace=False))
            picked.extend((k, int(i)) for i in chosen)
        self._drawn = ((seed, epoch), picked)
        return picked

    def resample(self, epoch: int, seed: int | None = None) -> None:
        """Make ``epoch``'s draw (with ``seed``, default the mix's own) the current one."""
        if seed is not None:
            self.seed = seed
        self.epoch = epoch
        self.draw(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Resample for ``epoch`` with the mix's own seed."""
        self.resample(epoch)

    def __len__(self) -> int:
        return len(self.draw(self.epoch))

    def at(self, epoch: int, index: int) -> Sample:
        """Sample ``index`` of ``epoch``'s draw."""
        k, i = self.draw(epoch)[index]
        return self.sources[k][i]

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        return self.at(self.epoch, index)

    @property
    def image_paths(self) -> list[Path]:
        """Image paths of the current epoch's draw, in order."""
        paths = [source.image_paths for source in self.sources]  # type: ignore[attr-defined]
        return [paths[k][i] for k, i in self.draw(self.epoch)]


def find_backgrounds(folders: Sequence[Path]) -> list[Path]:
    """Image files below ``folders`` (recursively), sorted; SamtuneError if there are none."""
    found = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise SamtuneError(f"{folder}: background folder not found; fix bg_paths")
        found.extend(p for p in folder.rglob("*")
                     if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise SamtuneError(f"no background images in {', '.join(str(f) for f in folders)}; "
                           "put png/jpg/tif images there or empty bg_paths")
    return sorted(found)


def _jitter(config: ColorJitterConfig) -> v2.Transform:
    jitter = v2.ColorJitter(brightness=config.brightness, contrast=config.contrast,
                            saturation=config.saturation, hue=config.hue)
    return v2.RandomApply([jitter], p=config.p)


class CompositeSource(Sequence[Sample]):
    """``source``'s samples with their objects pasted on random backgrounds.

    Per sample: optionally a random crop of image and objects together (``crop_foreground``),
    colour jitter of the objects, a random crop (+ jitter and blur) of a background image to
    the sample's size, then ``where(objects, image, background)``. Objects a crop removed
    entirely are dropped.
    """

    def __init__(self, source: Sequence[Sample], config: CompositeConfig, seed: int = 0) -> None:
        self.source = source
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.name = getattr(source, "name", "composite")
        self.backgrounds = find_backgrounds(config.bg_paths)
        self._fg_jitter = _jitter(config.fg_jitter)
        self._bg_augment = v2.RandomApply(
            [v2.ColorJitter(brightness=config.bg_jitter.brightness,
                            contrast=config.bg_jitter.contrast,
                            saturation=config.bg_jitter.saturation, hue=config.bg_jitter.hue),
             v2.GaussianBlur(config.bg_blur_kernel, config.bg_blur_sigma)], p=config.bg_aug_p)

    def set_epoch(self, epoch: int) -> None:
        """Draw different composites in each epoch; passes the epoch to a mixed source."""
        self.epoch = epoch
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def at(self, epoch: int, index: int) -> Sample:
        """Composite ``index`` of ``epoch``, the same for the same seed, epoch and index
        (stateless: for loaders that pass the epoch with each index)."""
        at = getattr(self.source, "at", None)
        sample = at(epoch, index) if at is not None else self.source[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([self.seed, epoch, index])
                                  .generate_state(1)[0]))
            return self._composite(sample)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def image_paths(self) -> list[Path]:
        return self.source.image_paths  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        return self.at(self.epoch, index)

    def _composite(self, sample: Sample) -> Sample:
        h, w = sample.size
        image = tv_tensors.Image(torch.from_numpy(sample.image).permute(2, 0, 1))
        objects = tv_tensors.Mask(torch.from_numpy(
            sample.label_map if sample.label_map is not None else sample.masks.astype(np.uint8)))
        if self.config.crop_foreground and torch.rand(()) < self.config.crop_p:
            crop = v2.RandomResizedCrop((h, w), scale=self.config.crop_scale, ratio=(w / h, w / h))
            image, objects = crop(image, objects)
        image = self._fg_jitter(image)
        pick = int(torch.randint(len(self.backgrounds), ()))
        background = torch.from_numpy(read_image_rgb(self.backgrounds[pick])).permute(2, 0, 1)
        ratio = self.config.bg_crop_ratio or (w / h * 15 / 16, w / h * 17 / 16)
        background = v2.RandomResizedCrop((h, w), ratio=ratio)(tv_tensors.Image(background))
        background = self._bg_augment(background)
        objects_np = objects.numpy()
        foreground = objects_np > 0 if objects_np.ndim == 2 else objects_np.any(axis=0)
        pasted = torch.where(torch.from_numpy(foreground)[None], image, background)
        return _with_objects(sample, pasted.permute(1, 2, 0).numpy(), objects_np)


def _with_objects(sample: Sample, image: np.ndarray, objects: np.ndarray) -> Sample:
    """A copy of ``sample`` with a new image and (possibly cropped) objects; objects that no
    longer have any pixel are dropped with their category and annotation ids."""
    if sample.label_map is not None:
        present = set(np.unique(objects).tolist())
        keep = [i for i, oid in enumerate(sample.object_ids) if oid in present]
    else:
        keep = [i for i in range(len(objects)) if objects[i].any()]

    def pick(values: list[int] | None) -> list[int] | None:
        return None if values is None else [values[i] for i in keep]

    common = {"image": np.ascontiguousarray(image), "category_ids": pick(sample.category_ids),
              "path": sample.path, "source": sample.source,
              "annotation_ids": pick(sample.annotation_ids)}
    if sample.label_map is not None:
        return Sample(label_map=objects, object_ids=[sample.object_ids[i] for i in keep], **common)
    return Sample(masks=objects[keep].astype(bool), **common)


def open_dataset(config: DataConfig, split: str = "train") -> Sequence[Sample]:
    """The training (``split='train'``) or validation set a DataConfig describes: one source
    as is, several (or one with percentage < 1) as a :class:`MixedSource`, and for training
    with ``composite.bg_paths`` a :class:`CompositeSource` around it. Validation uses
    ``config.val`` sources, else the ``val`` split of the training sources, and is never
    resampled or composited. With separate ``val`` sources, an unsplit source (no split
    folders) is used whole rather than cut by its ``val_size``."""
    separate = config.val is not None
    configs = config.train if split == "train" or not separate else config.val
    wanted = "train" if split == "train" else "val"
    sources = [open_source(c, split=_split_of(c, wanted, separate)) for c in configs]
    if split != "train":
        return sources[0] if len(sources) == 1 else MixedSource(sources, [1.0] * len(sources))
    data: Sequence[Sample] = sources[0]
    if len(sources) > 1 or configs[0].percentage < 1:
        data = MixedSource(sources, [c.percentage for c in configs], seed=config.seed)
    if config.composite is not None and config.composite.bg_paths:
        data = CompositeSource(data, config.composite, seed=config.seed)
    return data


def _split_of(config: SourceConfig, wanted: str, separate_val: bool) -> str:
    """``wanted``, except 'all' for an unsplit source when validation has its own sources."""
    if separate_val and not detect_layout(config.path, config.format).presplit:
        return "all"
    return wanted
