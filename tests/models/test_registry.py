import pytest

from samtune import SamtuneError, get_spec, list_models
from samtune.models.load import build_without_weights

EXPECTED = {
    "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam", "mobile_sam", "litemedsam",
    *(f"sam2_hiera_{s}" for s in ("t", "s", "b+", "l")),
    *(f"sam2.1_hiera_{s}" for s in ("t", "s", "b+", "l")),
    "sam_tiny", "mobile_sam_tiny", "sam2_tiny",
}


def test_every_design_name_is_registered():
    assert {spec.name for spec in list_models()} == EXPECTED


def test_specs_carry_files_urls_and_checksums():
    for spec in list_models(include_tiny=False):
        assert spec.filename, spec.name
        assert spec.url or spec.download_page or spec.package_asset, spec.name
        if spec.url:
            assert spec.url.startswith("https://") and spec.url.endswith(spec.filename), spec.name
    assert get_spec("sam_vit_b").sha256.startswith("ec2df627")
    assert get_spec("sam2.1_hiera_l").url.endswith("/092824/sam2.1_hiera_large.pt")
    assert get_spec("sam2_hiera_b+").url.endswith("/072824/sam2_hiera_base_plus.pt")
    assert get_spec("sam2.1_hiera_b+").sam2_config == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert get_spec("vit_t").name == "mobile_sam"


@pytest.mark.parametrize("spec", list_models(), ids=lambda s: s.name)
def test_parameter_counts_match_the_official_builders(spec):
    module = build_without_weights(spec)
    assert sum(p.numel() for p in module.parameters()) == spec.params


def test_unknown_name_suggests_close_ones():
    with pytest.raises(SamtuneError, match="Did you mean 'sam_vit_b'"):
        get_spec("sam_vit_bb")
    with pytest.raises(KeyError):
        get_spec("nothing-like-it")


def test_family_filter():
    assert {s.family for s in list_models(family="sam2")} == {"sam2"}
    assert all(not s.tiny for s in list_models(include_tiny=False))
