"""Study configuration: keys, types, suggestions, path resolution."""

from __future__ import annotations

import pytest

from conceptevo.config import load_config
from conceptevo.errors import ConfigError

BASE = """
workspace = "ws"
[probe]
root = "imgs"
[model]
arch = "torchvision:resnet18"
[[runs]]
name = "a"
checkpoints = "ckpt/epoch_{epoch}.pt"
"""


def write(tmp_path, text):
    p = tmp_path / "study.toml"
    p.write_text(text)
    return p


def test_paths_resolve_against_the_config_directory(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.workspace_path == tmp_path / "ws"
    assert cfg.resolve(cfg.runs[0].checkpoints) == tmp_path / "ckpt/epoch_{epoch}.pt"
    assert cfg.stimuli.k_stimuli == 20 and cfg.model.layers is None


@pytest.mark.parametrize("text,pattern", [
    (BASE.replace("[model]", "[model]\nlayer = 'x'"),
     r"unknown key 'layer' in model.*did you mean 'layers'"),
    (BASE + "\n[stimuli]\nk_stimulus = 3", r"did you mean 'k_stimuli'"),
    (BASE.replace('workspace = "ws"', "worksapce = 'ws'"), r"did you mean 'workspace'"),
    (BASE + "\n[stimuli]\nk_stimuli = 'many'", r"stimuli.k_stimuli must be an integer"),
    (BASE + "\n[stimuli]\nk_stimuli = 0",
     r"stimuli.k_stimuli = 0 is out of range: it must be between 1 and"),
    (BASE.replace('arch = "torchvision:resnet18"', 'arch = "resnet18"'), r"must look like"),
    (BASE + '\n[[runs]]\nname = "a"\ncheckpoints = "x"', r"two runs are named 'a'"),
    (BASE.replace('name = "a"', 'name = "a/b"'), r"usable as a folder name"),
    ("[probe]\nroot = 'x'\n[model]\narch = 'torchvision:vgg16'", r"no \[\[runs\]\]"),
    (BASE + "\n[probe2]", r"unknown key 'probe2'.*did you mean 'probe'"),
    ("workspace = ", r"not valid TOML"),
])
def test_bad_configs_name_the_key(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
