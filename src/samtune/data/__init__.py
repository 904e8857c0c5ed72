"""Datasets: sources that yield Samples, validation, transforms, prompts, batching."""

from samtune.data.images import read_image_rgb
from samtune.data.sample import Sample

__all__ = ["Sample", "read_image_rgb"]
