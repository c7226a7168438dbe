"""``srserve interpolate``: network interpolation is exact at alpha 0 and 1 and linear between."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from srserve.cli import main
from srserve.models import build_network
from srserve.models.repository import Repository

HPARAMS = {"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}


@pytest.fixture
def repo(tmp_path) -> Repository:
    repo = Repository(tmp_path / "repo")
    for name, seed in (("psnr", 0), ("gan", 1)):
        torch.manual_seed(seed)
        repo.add_weights(name, "rrdbnet", HPARAMS, build_network("rrdbnet", HPARAMS).state_dict())
    return repo


def weights(repo: Repository, name: str) -> dict:
    entry = repo.get(name)
    return load_file(str(entry.path / entry.weights[0].file))


@pytest.mark.parametrize("alpha,expected", [(0.0, "psnr"), (1.0, "gan")])
def test_interpolation_is_exact_at_the_ends(repo, alpha, expected):
    assert main(["interpolate", "psnr", "gan", "--alpha", str(alpha), "--name", "mix", "--repository", str(repo.root)]) == 0
    mixed, target = weights(repo, "mix"), weights(repo, expected)
    assert mixed.keys() == target.keys()
    assert all(torch.equal(mixed[k], target[k]) for k in target)


def test_interpolation_is_linear_in_between(repo):
    assert main(["interpolate", "psnr", "gan", "--alpha", "0.25", "--name", "mix", "--repository", str(repo.root)]) == 0
    a, b, mixed = weights(repo, "psnr"), weights(repo, "gan"), weights(repo, "mix")
    for k in a:
        torch.testing.assert_close(mixed[k], 0.75 * a[k] + 0.25 * b[k])
    assert repo.load("mix").net(4)(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


def test_interpolation_refuses_mismatched_models(repo, capsys):
    other = {**HPARAMS, "num_feat": 16}
    repo.add_weights("wide", "rrdbnet", other, build_network("rrdbnet", other).state_dict())
    assert main(["interpolate", "psnr", "wide", "--alpha", "0.5", "--name", "mix", "--repository", str(repo.root)]) == 1
    assert "differ" in capsys.readouterr().err
    assert main(["interpolate", "psnr", "gan", "--alpha", "1.5", "--name", "mix", "--repository", str(repo.root)]) == 1
