"""Prepares the device calls of a lent GPU, and brings their results back.

The device tool sends the checkout's tracked and untracked-but-not-ignored files plus the paths a
call carries, 64 MiB at most, and returns at most 8 files of 16 MiB from ``$OUT``. The shipped
weights alone are over 64 MiB, so the GPU suite and GPU training cannot travel with the
checkout as it is. This script makes each call fit:

    python bench/gpu_pack.py suite                 # then the device call it prints (the GPU suite)
    python bench/gpu_pack.py train 5 realesrnet    # then the device call it prints (GPU training)
    python bench/gpu_pack.py unpack FILES_AT       # here, after the training call: weights back
    python bench/gpu_pack.py restore               # here, after the last call: tracking back

``suite`` and ``train`` stop tracking ``model_repository/`` in git's index (the files stay where
they are; ``.git/info/exclude`` ignores the folder and a pre-commit hook refuses commits until
``restore``), and copy what the call needs into ``.gpu/`` (git-ignored), which the call carries:

- ``suite``: every shipped model, the weights of ``--exact`` models (default ``edsr``, the
  model of issue 17's targets) as they are and the others' rounded to fp16 (half the bytes;
  timings do not depend on the values, and the report's largest-difference column compares
  engines on the same weights). The models that travel rounded are named in each one's
  ``model.json`` (``gpu_pack``) and in the suite's report.
- ``train``: the models the named ``train/configs/gpu/`` configs continue, exact, and the
  training and validation images they read (from ``$SR_DATASETS``, default ``../shared/datasets``),
  plus Set5/Set14 at their scales for the cards written when they publish.

Each command checks the size that would travel and refuses (one line) above the limit.
``results`` runs on the GPU machine (``train/gpu_call.sh``): it tars the weights files whose
SHA-256 changed, with their model folder's ``model.json`` and card, and the logs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 64 * 2**20
MARGIN_BYTES = 2**20            # the tool's own count may differ a little from ours
RESULT_FILES, RESULT_BYTES = 8, 15 * 2**20  # the tool returns 8 files of at most 16 MiB
EXCLUDE_LINES = ["# bench/gpu_pack.py: untracked for a device call; `python bench/gpu_pack.py restore`", "/model_repository/"]
HOOK_MARK = "# bench/gpu_pack.py guard"
HOOK = f"""#!/bin/sh
{HOOK_MARK}
if [ -e .gpu/UNTRACKED ]; then
  echo "model_repository/ is untracked for a device call: run 'python bench/gpu_pack.py restore' before committing" >&2
  exit 1
fi
"""
SKIP_IN_MODEL = {"onnx", "exports.json"}  # exported graphs: rebuilt there


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def travelling_bytes(root: Path, carry: list[str]) -> int:
    """What a device call would send: tracked and untracked-not-ignored files, plus ``carry``."""
    listed = git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    files = {root / name for name in listed if name}
    sent = sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())
    return sent + sum(folder_bytes(root / c) for c in carry if (root / c).exists())


# --- tracking ----------------------------------------------------------------------------------
def marker(root: Path) -> Path:
    return root / ".gpu" / "UNTRACKED"


def untrack_repository(root: Path) -> None:
    """Takes model_repository/ out of git's index (the files stay) and ignores it, so the device
    call does not send it; a pre-commit hook refuses commits until ``restore``."""
    if marker(root).exists():
        return
    git(root, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "model_repository")
    exclude = root / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    exclude.write_text("".join(f"{line}\n" for line in [*lines, *EXCLUDE_LINES]))
    hook = root / ".git" / "hooks" / "pre-commit"
    if not hook.exists():
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text(HOOK)
        hook.chmod(0o755)
    marker(root).parent.mkdir(exist_ok=True)
    marker(root).write_text("model_repository/ untracked by bench/gpu_pack.py\n")


def restore_tracking(root: Path) -> bool:
    """Undoes ``untrack_repository``; returns whether there was anything to undo."""
    if not marker(root).exists():
        return False
    git(root, "reset", "-q", "--", "model_repository")
    exclude = root / ".git" / "info" / "exclude"
    if exclude.exists():
        kept = [line for line in exclude.read_text().splitlines() if line not in EXCLUDE_LINES]
        exclude.write_text("".join(f"{line}\n" for line in kept))
    hook = root / ".git" / "hooks" / "pre-commit"
    if hook.exists() and HOOK_MARK in hook.read_text():
        hook.unlink()
    marker(root).unlink()
    return True


# --- packing -----------------------------------------------------------------------------------
def copy_model(source: Path, dest: Path, fp16: bool) -> int:
    """Copies one model folder (without exported graphs); ``fp16`` rounds its float weights to
    fp16 and records that in model.json. Returns the bytes written."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    meta = json.loads((source / "model.json").read_text())
    for item in source.iterdir():
        if item.name not in SKIP_IN_MODEL and item.is_file():
            shutil.copy2(item, dest / item.name)
    if fp16:
        from safetensors.torch import load_file, save_file

        from srserve.models.repository import sha256_file

        for weights in meta["weights"]:
            path = dest / weights["file"]
            tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
            save_file(tensors, str(path))
            weights["sha256"] = sha256_file(path)
        meta["gpu_pack"] = "weights rounded to fp16 to fit a device call (timings only; bench/gpu_pack.py)"
        (dest / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder_bytes(dest)


def shipped_models(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "model_repository").glob("*/model.json"))


def check_size(root: Path, carry: list[str]) -> int:
    size = travelling_bytes(root, carry)
    if size > LIMIT_BYTES - MARGIN_BYTES:
        raise SystemExit(f"gpu_pack: the call would send {size / 2**20:.1f} MiB, over the "
                         f"{(LIMIT_BYTES - MARGIN_BYTES) / 2**20:.0f} MiB this script allows: carry less")
    return size


def print_call(command: str, carry: list[str], timeout_s: int, size: int) -> None:
    print(f"sends {size / 2**20:.1f} MiB of the 64 MiB a call may carry. The device call:")
    print(json.dumps({"command": command, "carry": carry, "timeout_s": timeout_s}))
    print("afterwards: python bench/gpu_pack.py restore   (or unpack FILES_AT after a training call)")


def pack_suite(root: Path, exact: list[str]) -> None:
    if not (root / ".whl").is_dir():
        print("gpu_pack: no .whl/ here: run `bash bench/gpu_wheels.sh` first, or the served path will be skipped",
              file=sys.stderr)
    dest = root / ".gpu" / "suite" / "model_repository"
    shutil.rmtree(dest.parent, ignore_errors=True)
    for model in shipped_models(root):
        copy_model(model, dest / model.name, fp16=model.name not in exact)
    untrack_repository(root)
    carry = [".gpu/suite", *([".whl"] if (root / ".whl").is_dir() else [])]
    print_call("bash bench/gpu_suite.sh --repository .gpu/suite/model_repository", carry, 540, check_size(root, carry))


def training_needs(root: Path, names: list[str]) -> tuple[set[str], set[str], dict[str, set[int]]]:
    """The model folders, dataset folders (relative to $SR_DATASETS) and benchmark scales the
    named GPU configs read."""
    import yaml

    models, folders, scales = set(), set(), {}
    for name in names:
        path = root / "train" / "configs" / "gpu" / f"{name}.yaml"
        if not path.is_file():
            raise SystemExit(f"gpu_pack: no {path.relative_to(root)}")
        cfg = yaml.safe_load(path.read_text())
        models.add(cfg["repository_name"])
        if str(cfg.get("init_from", "")).startswith("model_repository/"):
            models.add(cfg["init_from"].split("/")[1])
        dataset_paths = [*cfg["data"]["folders"], cfg.get("validation", {}).get("dataset", "${SR_DATASETS}/benchmark/Set5")]
        folders.update(p.replace("${SR_DATASETS}/", "") for p in dataset_paths if p.startswith("${SR_DATASETS}/"))
    for model in models:
        meta = json.loads((root / "model_repository" / model / "model.json").read_text())
        scales[model] = {s for w in meta["weights"] for s in w["scales"]}
    return models, folders, scales


def dataset_copies(folders: set[str], scales: set[int]) -> set[str]:
    """Training folders whole; benchmarks (validation, and Set5/Set14 for the cards written on
    publishing) only at the scales the models serve."""
    copies = {f for f in folders if not f.startswith("benchmark/")}
    benchmarks = {f for f in folders if f.startswith("benchmark/")} | {"benchmark/Set5", "benchmark/Set14"}
    return copies | {f"{b}/x{s}" for b in benchmarks for s in scales}


def pack_train(root: Path, datasets: Path, minutes: float, names: list[str]) -> None:
    models, folders, scales = training_needs(root, names)
    pack = root / ".gpu" / "train"
    shutil.rmtree(pack, ignore_errors=True)
    manifest = {"names": names, "weights": {}}
    for model in sorted(models):
        copy_model(root / "model_repository" / model, pack / "model_repository" / model, fp16=False)
        meta = json.loads((pack / "model_repository" / model / "model.json").read_text())
        manifest["weights"].update({f"{model}/{w['file']}": w["sha256"] for w in meta["weights"]})
    for folder in sorted(dataset_copies(folders, {s for ss in scales.values() for s in ss})):
        source = datasets / folder
        if not source.is_dir():
            raise SystemExit(f"gpu_pack: {source} is missing (set SR_DATASETS)")
        shutil.copytree(source, pack / "datasets" / folder)
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    untrack_repository(root)
    size = check_size(root, [".gpu/train"])
    timeout = min(600, int(minutes * 60 + 150))  # training, then cards and the tars
    print_call(f"bash train/gpu_call.sh {minutes:g} {' '.join(names)}", [".gpu/train"], timeout, size)


# --- results -----------------------------------------------------------------------------------
def changed_weights(pack: Path) -> list[str]:
    """``model/file`` of each weights file whose SHA-256 differs from what was packed."""
    from srserve.models.repository import sha256_file

    manifest = json.loads((pack / "manifest.json").read_text())
    return [key for key, sha in manifest["weights"].items()
            if (pack / "model_repository" / key).is_file() and sha256_file(pack / "model_repository" / key) != sha]


def pack_results(pack: Path, logs: Path, out: Path) -> list[Path]:
    """On the GPU machine: tars of the changed weights (each with its folder's model.json and
    card files), at most RESULT_BYTES each and RESULT_FILES in all (the last one with the logs)."""
    repository = pack / "model_repository"
    groups: list[list[str]] = []
    sizes: list[int] = []
    for key in changed_weights(pack):
        model = key.split("/")[0]
        members = [key, *(f"{model}/{p.name}" for p in (repository / model).iterdir()
                          if p.is_file() and p.suffix in (".json", ".md"))]
        size = sum((repository / m).stat().st_size for m in members)
        fits = [i for i, used in enumerate(sizes) if used + size <= RESULT_BYTES]
        if fits:  # a model's model.json may then be in a tar twice: the same file
            groups[fits[0]].extend(members)
            sizes[fits[0]] += size
        else:
            groups.append(members)
            sizes.append(size)
    if len(groups) >= RESULT_FILES:
        raise SystemExit(f"gpu_pack: {len(groups)} result files do not fit the tool's {RESULT_FILES}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, members in enumerate(groups):
        path = out / f"weights-{i}.tar"
        with tarfile.open(path, "w") as tar:
            for member in dict.fromkeys(members):
                tar.add(repository / member, arcname=member)
        written.append(path)
    if logs.is_dir():
        path = out / "logs.tar"
        with tarfile.open(path, "w") as tar:
            tar.add(logs, arcname="logs")
        written.append(path)
    for path in written:
        print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB")
    return written


def unpack(root: Path, files_at: Path) -> list[str]:
    """Here: restores tracking, then writes the trained weights, model.json and cards from the
    training call's tars into model_repository/ (logs into runs/gpu_logs/)."""
    restore_tracking(root)
    updated = []
    for tar_path in sorted(files_at.glob("weights-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) != 2 or not member.isfile() or ".." in parts:
                    raise SystemExit(f"gpu_pack: unexpected member {member.name} in {tar_path.name}")
                tar.extract(member, root / "model_repository", filter="data")
                updated.append(member.name)
    logs = files_at / "logs.tar"
    if logs.is_file():
        with tarfile.open(logs) as tar:
            tar.extractall(root / "runs" / "gpu_logs", filter="data")
    for name in updated:
        print(f"model_repository/{name}")
    return updated


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # tests: a copy of a checkout
    sub = p.add_subparsers(dest="command", required=True)
    suite = sub.add_parser("suite", help="prepare the GPU suite's call")
    suite.add_argument("--exact", nargs="*", default=["edsr"], help="models whose weights travel unrounded")
    train = sub.add_parser("train", help="prepare a GPU training call")
    train.add_argument("minutes", type=float)
    train.add_argument("names", nargs="+", help="configs in train/configs/gpu/ (without .yaml)")
    train.add_argument("--datasets", type=Path,
                       default=Path(os.environ.get("SR_DATASETS", ROOT.parent / "shared" / "datasets")))
    results = sub.add_parser("results", help="(on the GPU machine) tar the changed weights and the logs")
    results.add_argument("pack", type=Path)
    results.add_argument("logs", type=Path)
    results.add_argument("out", type=Path)
    unpacking = sub.add_parser("unpack", help="here: restore tracking and take the trained weights in")
    unpacking.add_argument("files_at", type=Path)
    sub.add_parser("restore", help="here: track model_repository/ again")
    args = p.parse_args(argv)
    root = args.root.resolve()
    if args.command == "suite":
        pack_suite(root, args.exact)
    elif args.command == "train":
        pack_train(root, args.datasets.resolve(), args.minutes, args.names)
    elif args.command == "results":
        pack_results(args.pack, args.logs, args.out)
    elif args.command == "unpack":
        unpack(root, args.files_at)
    else:
        print("model_repository/ tracked again" if restore_tracking(root) else "nothing to restore")
    return 0


if __name__ == "__main__":
    sys.exit(main())
