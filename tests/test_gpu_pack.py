"""bench/gpu_pack.py: device calls that fit the tool's 64 MiB, and their results back.

Each test works on a throw-away git checkout with a tiny model repository (no GPU, no device
tool): what would travel is what ``git ls-files --cached --others --exclude-standard`` lists
plus the carried folders, which is how the device tool describes its transfer.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from srserve.models.registry import build_network
from srserve.models.repository import Repository

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_pack", ROOT / "bench" / "gpu_pack.py")
gpu_pack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_pack)

HPARAMS = {"n_resblocks": 1, "n_feats": 8, "scale": 2}
GPU_CONFIG = """name: tiny_gpu
recipe: pixel
arch: edsr
hparams: {n_resblocks: 1, n_feats: 8, scale: 2}
repository_name: tiny
data: {folders: ["${SR_DATASETS}/train/photos"], lr_patch: 8, batch: 2}
validation: {dataset: "${SR_DATASETS}/benchmark/Set5"}
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A committed checkout with two tiny models (tiny, other) and a GPU config for tiny."""
    root = tmp_path / "checkout"
    torch.manual_seed(0)
    repo = Repository(root / "model_repository")
    for name in ("tiny", "other"):
        repo.add_weights(name, "edsr", HPARAMS, build_network("edsr", HPARAMS).state_dict())
    (root / "train" / "configs" / "gpu").mkdir(parents=True)
    (root / "train" / "configs" / "gpu" / "tiny.yaml").write_text(GPU_CONFIG)
    (root / ".gitignore").write_text("/.gpu/\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "checkout")
    return root


@pytest.fixture
def datasets(tmp_path) -> Path:
    root = tmp_path / "datasets"
    for folder in ("train/photos", *(f"benchmark/{b}/x{s}/HR" for b in ("Set5", "Set14") for s in (2, 3))):
        (root / folder).mkdir(parents=True)
        (root / folder / "a.png").write_bytes(b"png")
    return root


def tracked(root: Path) -> list[str]:
    return git(root, "ls-files").split()


def test_suite_untracks_the_repository_and_carries_rounded_copies(checkout, capsys):
    before = gpu_pack.travelling_bytes(checkout, [])
    gpu_pack.main(["--root", str(checkout), "suite", "--exact", "tiny"])
    call = json.loads(capsys.readouterr().out.splitlines()[1])
    assert call["command"] == "bash bench/gpu_suite.sh --repository .gpu/suite/model_repository"
    assert call["carry"] == [".gpu/suite"] and call["timeout_s"] <= 600
    assert not [f for f in tracked(checkout) if f.startswith("model_repository/")]
    assert (checkout / "model_repository" / "tiny" / "model.json").is_file()  # the files stay
    # what travels: the checkout without the repository, and the copies (one of them halved)
    copies = checkout / ".gpu" / "suite" / "model_repository"
    assert gpu_pack.travelling_bytes(checkout, []) < before / 10
    repo = Repository(copies)
    assert not repo.get("tiny").extra.get("gpu_pack") and repo.get("other").extra.get("gpu_pack")
    exact = load_file(str(copies / "tiny" / "x2.safetensors"))
    rounded = load_file(str(copies / "other" / "x2.safetensors"))
    original = load_file(str(checkout / "model_repository" / "other" / "x2.safetensors"))
    assert all(t.dtype == torch.float32 for t in exact.values())
    assert all(rounded[k].dtype == torch.float16 and torch.equal(rounded[k].float(), v.half().float())
               for k, v in original.items() if v.is_floating_point())
    assert repo.load("other", "cpu").scales == [2]  # the rounded copy loads (sha256 rewritten)


def test_commits_are_refused_until_restore_tracks_the_repository_again(checkout, capsys):
    tracked_before = tracked(checkout)
    gpu_pack.main(["--root", str(checkout), "suite"])
    refused = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                             cwd=checkout, capture_output=True, text=True)
    assert refused.returncode != 0 and "gpu_pack.py restore" in refused.stderr
    gpu_pack.main(["--root", str(checkout), "restore"])
    assert tracked(checkout) == tracked_before
    assert git(checkout, "status", "--porcelain") == ""  # exclude line and hook gone, index as committed
    assert not (checkout / ".git" / "hooks" / "pre-commit").exists()


def test_a_call_over_the_limit_is_refused(checkout, monkeypatch):
    monkeypatch.setattr(gpu_pack, "LIMIT_BYTES", 1 + gpu_pack.MARGIN_BYTES)
    with pytest.raises(SystemExit, match="over the"):
        gpu_pack.main(["--root", str(checkout), "suite"])


def test_train_carries_the_continued_models_and_the_data_they_read(checkout, datasets, capsys):
    gpu_pack.main(["--root", str(checkout), "train", "4", "tiny", "--datasets", str(datasets)])
    call = json.loads(capsys.readouterr().out.splitlines()[1])
    assert call == {"command": "bash train/gpu_call.sh 4 tiny", "carry": [".gpu/train"], "timeout_s": 390}
    pack = checkout / ".gpu" / "train"
    assert sorted(p.name for p in (pack / "model_repository").iterdir()) == ["tiny"]
    assert load_file(str(pack / "model_repository" / "tiny" / "x2.safetensors"))  # exact copy
    copied = sorted(str(p.relative_to(pack / "datasets")) for p in (pack / "datasets").rglob("a.png"))
    # training folder whole; benchmarks only at the model's scale (x2), not x3
    assert copied == ["benchmark/Set14/x2/HR/a.png", "benchmark/Set5/x2/HR/a.png", "train/photos/a.png"]


def test_results_tar_only_changed_weights_and_unpack_takes_them_in(checkout, datasets, tmp_path, capsys):
    gpu_pack.main(["--root", str(checkout), "train", "4", "tiny", "--datasets", str(datasets)])
    pack = checkout / ".gpu" / "train"
    weights = pack / "model_repository" / "tiny" / "x2.safetensors"
    trained = {k: v + 1 for k, v in load_file(str(weights)).items()}  # "training" changed the weights
    save_file(trained, str(weights))
    (pack / "model_repository" / "tiny" / "README.md").write_text("trained card\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "tiny.log").write_text("log\n")
    out = tmp_path / "out"
    written = gpu_pack.pack_results(pack, logs, out)
    assert [p.name for p in written] == ["weights-0.tar", "logs.tar"]
    with tarfile.open(out / "weights-0.tar") as tar:
        assert sorted(tar.getnames()) == ["tiny/README.md", "tiny/model.json", "tiny/x2.safetensors"]

    gpu_pack.main(["--root", str(checkout), "unpack", str(out)])
    assert not (checkout / ".gpu" / "UNTRACKED").exists()
    assert (checkout / "model_repository" / "tiny" / "README.md").read_text() == "trained card\n"
    got = load_file(str(checkout / "model_repository" / "tiny" / "x2.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in trained.items())
    assert (checkout / "runs" / "gpu_logs" / "logs" / "tiny.log").is_file()
    # the repository is tracked again, with the trained weights and the new card as changes
    assert set(git(checkout, "status", "--porcelain").splitlines()) == {
        " M model_repository/tiny/x2.safetensors", "?? model_repository/tiny/README.md", "?? runs/"}


def test_results_split_into_tars_the_tool_can_return(tmp_path, monkeypatch):
    pack = tmp_path / "pack"
    manifest = {"names": ["m"], "weights": {}}
    for i in range(3):
        folder = pack / "model_repository" / f"m{i}"
        folder.mkdir(parents=True)
        (folder / "w.safetensors").write_bytes(bytes([i]) * 600)
        (folder / "model.json").write_text("{}")
        manifest["weights"][f"m{i}/w.safetensors"] = "packed-sha"
    (pack / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(gpu_pack, "RESULT_BYTES", 1300)  # two models' weights per tar at most
    written = gpu_pack.pack_results(pack, tmp_path / "no-logs", tmp_path / "out")
    assert [p.name for p in written] == ["weights-0.tar", "weights-1.tar"]
    assert all(p.stat().st_size <= 1300 + 10240 for p in written)  # tar headers and padding aside


@pytest.mark.parametrize("config", sorted((ROOT / "train" / "configs" / "gpu").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_gpu_config_continues_a_shipped_model(config):
    """A lent GPU's minutes go to continuing the shipped weights (the pack carries them, and the
    trainer warm-starts from them), never to a fresh start."""
    from srserve.train.config import load_config

    cfg = load_config(config)
    entry = Repository(ROOT / "model_repository").get(cfg.repository_name)
    assert entry.architecture == cfg.arch
    assert [w for w in entry.weights if w.hparams == cfg.hparams and 0 < w.source.get("iterations", 0) < cfg.iterations]


@pytest.mark.slow
def test_a_training_call_runs_end_to_end_as_on_the_gpu_machine(tmp_path):
    """pack here -> train/gpu_call.sh under an interpreter without srserve installed (as on the
    GPU machine; on the CPU, a few seconds) -> tars in OUT -> unpack here: the trained weights
    arrive in the repository and git tracks it again."""
    import device_like
    from PIL import Image

    checkout = tmp_path / "checkout"
    code = git(ROOT, "ls-files", "-z").split("\0")
    for name in (n for n in code if n and not n.startswith("model_repository/")):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_bytes((ROOT / name).read_bytes())
    (checkout / "train" / "gpu_call.sh").chmod(0o755)
    torch.manual_seed(0)
    Repository(checkout / "model_repository").add_weights("tiny", "edsr", HPARAMS, build_network("edsr", HPARAMS).state_dict(),
                                                          source={"iterations": 1})
    (checkout / "train" / "configs" / "gpu" / "tiny.yaml").write_text(
        GPU_CONFIG.replace("recipe: pixel", "recipe: edsr") + "iterations: 1000000\nvalidate_every: 1000\nlog_every: 1\noptim: {lr: 1.0e-3}\n")
    git(checkout, "init", "-q")
    git(checkout, "add", "-A")
    git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "checkout")
    datasets = tmp_path / "datasets"
    rng = np.random.default_rng(0)
    for folder, size in [("train/photos", 64), *((f"benchmark/{b}/x2/HR", 32) for b in ("Set5", "Set14")),
                         *((f"benchmark/{b}/x2/LR", 16) for b in ("Set5", "Set14"))]:
        (datasets / folder).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(datasets / folder / "img_001.png")

    gpu_pack.main(["--root", str(checkout), "train", "0.05", "tiny", "--datasets", str(datasets)])
    out = tmp_path / "out"
    done = subprocess.run(["bash", "train/gpu_call.sh", "0.05", "tiny"], cwd=checkout, capture_output=True, text=True,
                          env={**device_like.env(tmp_path / "device", serving=False), "SR_TRAIN_DEVICE": "cpu",
                               "OUT": str(out), "SR_RUNS": str(tmp_path / "runs")}, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "failed" not in done.stdout, (tmp_path / "runs" / "logs" / "tiny.log").read_text()[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar", "weights-0.tar"]

    before = load_file(str(checkout / "model_repository" / "tiny" / "x2.safetensors"))
    gpu_pack.main(["--root", str(checkout), "unpack", str(out)])
    after = load_file(str(checkout / "model_repository" / "tiny" / "x2.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained and came back
    source = Repository(checkout / "model_repository").get("tiny").weights[0].source
    assert source["iterations"] > 1 and source["config"].endswith("gpu/tiny.yaml")
    assert " M model_repository/tiny/x2.safetensors" in git(checkout, "status", "--porcelain").splitlines()
