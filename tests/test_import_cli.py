"""``srserve import`` and ``srserve list``: real checkpoints in, repository entries out, one-line
errors for bad files (the CLI is run as a subprocess where the exit path matters)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checkpoint_fixtures import save_pytorch_vdsr_modern, save_pytorch_vdsr_py2, tiny_vdsr_state
from srserve.cli import main
from srserve.models.registry import build_network
from srserve.models.repository import Repository

SRSERVE = Path(sys.executable).with_name("srserve")  # .venv/bin/srserve


def run_srserve(*args: str) -> subprocess.CompletedProcess:
    command = [str(SRSERVE)] if SRSERVE.exists() else [sys.executable, "-m", "srserve"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)


def import_args(checkpoint, name, repo, *extra) -> list[str]:
    return ["import", str(checkpoint), "--name", name, "--repository", str(repo), *extra]


def tiny_edsr_checkpoint(path: Path, scale: int = 2) -> dict:
    torch.manual_seed(scale)
    state = build_network("edsr", {"n_resblocks": 1, "n_feats": 4, "scale": scale}).state_dict()
    torch.save(state, path)
    return state


def test_import_pytorch_vdsr_checkpoint_and_run_it(tmp_path):
    """The pytorch-vdsr layout (pickled vdsr.Net, CUDA storages) through the real console script."""
    checkpoint, repo = tmp_path / "model_epoch_50.pth", tmp_path / "repo"
    original = save_pytorch_vdsr_modern(checkpoint, tmp_path)
    result = run_srserve(*import_args(checkpoint, "vdsr", repo, "--license", "MIT",
                                      "--provenance", "twtygqyy/pytorch-vdsr"))
    assert result.returncode == 0, result.stderr
    assert "detected: vdsr num_layers=5 n_feats=8" in result.stdout
    assert "x2, x3, x4" in result.stdout and f"{sum(p.numel() for p in original.parameters()):,} parameters" in result.stdout

    meta = json.loads((repo / "vdsr" / "model.json").read_text())
    assert (meta["architecture"], meta["license"], meta["provenance"]) == ("vdsr", "MIT", "twtygqyy/pytorch-vdsr")
    (weights,) = meta["weights"]
    assert weights["scales"] == [2, 3, 4]
    assert weights["source"] == {"file": "model_epoch_50.pth",
                                 "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}

    model = Repository(repo).load("vdsr")
    y = torch.rand(1, 1, 10, 10)
    with torch.no_grad():
        assert torch.allclose(model.net(3).net(y), original(y), atol=1e-6)  # same as pytorch-vdsr's own Net
        out = model.net(3)(torch.rand(1, 3, 5, 6))
    assert out.shape == (1, 3, 15, 18) and torch.isfinite(out).all()


def test_import_python2_vdsr_with_scale_restricts_it(tmp_path, capsys):
    save_pytorch_vdsr_py2(tmp_path / "model_epoch_50.pth", tiny_vdsr_state())
    assert main(import_args(tmp_path / "model_epoch_50.pth", "vdsr-x3", tmp_path / "repo", "--scale", "3")) == 0
    assert "scales: x3;" in capsys.readouterr().out
    entry = Repository(tmp_path / "repo").get("vdsr-x3")
    assert entry.scales == [3] and entry.weights[0].file == "x3.safetensors"


def test_import_edsr_scales_and_arch_are_checked(tmp_path, capsys):
    repo = tmp_path / "repo"
    tiny_edsr_checkpoint(tmp_path / "edsr_x2.pt", 2)
    tiny_edsr_checkpoint(tmp_path / "edsr_x4.pt", 4)
    assert main(import_args(tmp_path / "edsr_x2.pt", "edsr", repo, "--scale", "4")) == 1
    assert "does not match the checkpoint: this edsr serves x2" in capsys.readouterr().err
    assert main(import_args(tmp_path / "edsr_x2.pt", "edsr", repo, "--arch", "rrdbnet")) == 1
    assert "not a rrdbnet checkpoint" in capsys.readouterr().err
    assert not (repo / "edsr").exists()
    assert main(import_args(tmp_path / "edsr_x2.pt", "edsr", repo, "--scale", "2")) == 0
    assert main(import_args(tmp_path / "edsr_x4.pt", "edsr", repo, "--arch", "edsr")) == 0
    entry = Repository(repo).get("edsr")
    assert entry.scales == [2, 4] and [w.source["file"] for w in entry.weights] == ["edsr_x2.pt", "edsr_x4.pt"]


def test_weights_that_do_not_fit_are_a_one_line_error(tmp_path, capsys):
    state = tiny_edsr_checkpoint(tmp_path / "ok.pt")
    state["body.0.body.0.weight"] = torch.zeros(4, 4, 5, 5)  # a 5x5 kernel where EDSR has 3x3
    torch.save(state, tmp_path / "bad.pt")
    assert main(import_args(tmp_path / "bad.pt", "bad", tmp_path / "repo")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights do not fit" in err and "size mismatch" in err


def truncated_vdsr(tmp_path: Path) -> Path:
    save_pytorch_vdsr_py2(tmp_path / "full.pth", tiny_vdsr_state())
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "model_epoch_50.pth").write_bytes(data[: len(data) - 100])
    return tmp_path / "model_epoch_50.pth"


def truncated_zip(tmp_path: Path) -> Path:
    tiny_edsr_checkpoint(tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "edsr_x2.pt").write_bytes(data[: len(data) // 2])
    return tmp_path / "edsr_x2.pt"


def garbage(tmp_path: Path) -> Path:
    (tmp_path / "weights.pth").write_bytes(b"<html>404 Not Found</html>\n" * 20)
    return tmp_path / "weights.pth"


@pytest.mark.parametrize("make,messages", [
    (truncated_vdsr, ("model_epoch_50.pth: ", "truncated")),
    (truncated_zip, ("edsr_x2.pt: ", "truncated or corrupt PyTorch zip file")),
    (garbage, ("weights.pth: ", "unknown format")),
])
def test_bad_files_exit_non_zero_with_one_line_and_no_traceback(tmp_path, make, messages):
    repo = tmp_path / "repo"
    result = run_srserve(*import_args(make(tmp_path), "bad", repo))
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("srserve import: error: ") and all(m in result.stderr for m in messages)
    assert not (repo / "bad").exists()


def test_list_shows_bicubic_and_imported_models(tmp_path, capsys):
    repo = tmp_path / "repo"
    tiny_edsr_checkpoint(tmp_path / "edsr_x2.pt")
    save_pytorch_vdsr_py2(tmp_path / "model_epoch_50.pth", tiny_vdsr_state())
    assert main(import_args(tmp_path / "edsr_x2.pt", "edsr-tiny", repo, "--description", "a tiny EDSR")) == 0
    assert main(import_args(tmp_path / "model_epoch_50.pth", "vdsr", repo)) == 0
    capsys.readouterr()

    assert main(["list", "--repository", str(repo)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[2:]] == ["bicubic", "edsr-tiny", "vdsr"]
    assert "a tiny EDSR" in table[3]

    result = run_srserve("list", "--json", "--repository", str(repo))
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["bicubic"]["architecture"] == "bicubic" and 4 in rows["bicubic"]["scales"]
    assert rows["vdsr"]["params"] == sum(v.numel() for v in tiny_vdsr_state().values())
    assert (rows["edsr-tiny"]["architecture"], rows["edsr-tiny"]["scales"]) == ("edsr", [2])
    assert rows["edsr-tiny"]["size_bytes"] == (repo / "edsr-tiny" / "x2.safetensors").stat().st_size


def imported_edsr_with_card(tmp_path: Path, **card) -> tuple[Path, dict]:
    """A repository with a tiny imported ×2 EDSR ``edsr-tiny`` whose model.json also holds
    ``card`` (measured figures, as a trained model's card would); the repository and model.json."""
    repo = tmp_path / "repo"
    tiny_edsr_checkpoint(tmp_path / "edsr_x2.pt")
    assert main(import_args(tmp_path / "edsr_x2.pt", "edsr-tiny", repo)) == 0
    model_json = repo / "edsr-tiny" / "model.json"
    data = {**json.loads(model_json.read_text()), **card}
    model_json.write_text(json.dumps(data))
    return repo, data


def test_list_benchmarks_prints_the_measured_table_of_each_card(tmp_path, capsys):
    repo, _ = imported_edsr_with_card(tmp_path, benchmarks=[
        {"dataset": "Set14", "scale": 2, "psnr": 31.0, "ssim": 0.9, "bicubic": 30.23},
        {"dataset": "Set5", "scale": 2, "psnr": 36.5, "ssim": 0.95, "bicubic": 33.68}])
    capsys.readouterr()

    assert main(["list", "--benchmarks", "--repository", str(repo)]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert all(r[1].strip().startswith("x2.safetensors, 0.") for r in rows)
    assert [[c.strip() for c in r[2:]] for r in rows] == [
        ["x2", "Set5", "36.50", "0.9500", "33.68", "+2.82"], ["x2", "Set14", "31.00", "0.9000", "30.23", "+0.77"]]
