"""``ModelSpec``: what samtune knows about one model name (the registry holds them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    """What samtune knows about one model name.

    ``family`` picks the adapter class (``samtune.models.registry.FAMILIES``); ``encoder`` and
    ``sam2_config`` pick the architecture inside the family. ``params`` is the exact parameter
    count of the official module (tested against a build on the meta device). ``sha256`` is set
    only where a checksum is published; ``download_page`` is where to fetch by hand when the
    authors publish no direct URL (MedSAM); ``package_asset`` (package, file name) is a
    checkpoint an installed package ships (LiteMedSAM's). ``preprocessing`` names a model's
    own image preprocessing where it differs from its family's (``medsam``: the MedSAM
    authors' square resize and min-max, :class:`~samtune.models.preprocess.MedSamResize`).
    """

    name: str
    family: str
    encoder: str
    input_size: int
    params: int
    filename: str | None = None
    url: str | None = None
    sha256: str | None = None
    sam2_config: str | None = None
    download_page: str | None = None
    package_asset: tuple[str, str] | None = None
    description: str = ""
    tiny: bool = False
    aliases: tuple[str, ...] = field(default_factory=tuple)
    preprocessing: str = ""
