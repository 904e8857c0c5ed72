"""Config values arrive as the user wrote them: YAML switches, list items in --set."""

import pytest

from samtune.config import ConfigError, build_run_config


def test_yaml_off_and_on_read_as_the_words(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {train: [{path: data/}]}\n"
                    "train: {cache_embeddings: off, cache_in_memory: on, precision: 32}\n")
    t = build_run_config(path, []).train
    assert (t.cache_embeddings, t.cache_in_memory, t.precision) == ("off", "auto", "32")
    t = build_run_config(path, ["train.cache_embeddings=false", "train.cache_in_memory=off"]).train
    assert (t.cache_embeddings, t.cache_in_memory) == ("off", "off")
    # a bare off in --set is YAML's boolean too: the documented word, as in the file
    t = build_run_config(None, ["data.train=[{path: data/}]", "train.cache_embeddings=off",
                                "train.cache_in_memory=on"]).train
    assert (t.cache_embeddings, t.cache_in_memory) == ("off", "auto")
    with pytest.raises(ConfigError, match="cache_embeddings"):
        build_run_config(path, ["train.cache_embeddings=sometimes"])


def test_set_addresses_list_items():
    config = build_run_config(None, ["data.train=[{path: a}, {path: b}]",
                                     "data.train.1.skip_bad=true", "data.train.0.val_size=0.5"])
    a, b = config.data.train
    assert (a.skip_bad, b.skip_bad, a.val_size, b.val_size) == (False, True, 0.5, 0.3)
    assert build_run_config(None, ["data.train.0.path=elsewhere"]).data.train[0].path.name == "elsewhere"
    with pytest.raises(ConfigError, match=r"data.train is a list of 1 item\(s\); address one by its index 0..0, not '3'"):
        build_run_config(None, ["data.train.3.skip_bad=true"])
    with pytest.raises(ConfigError, match="not 'first'"):
        build_run_config(None, ["data.train.first.skip_bad=true"])
