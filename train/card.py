"""Model cards: REPO/NAME/README.md with the training facts and a measured PSNR table."""
from __future__ import annotations

from pathlib import Path

from srserve.models.repository import ModelEntry, Repository, RepositoryError

from .data import expand_path

BENCHMARKS = ("Set5", "Set14")
REAL_WORLD = "real-v1"    # srserve/realworld.py; its blur is meant for x4, so it is measured at x4
REAL_WORLD_SCALES = (4,)


def measure(entry: ModelEntry, datasets_root: Path, device: str = "cpu", degrade: str | None = None) -> list[dict]:
    """Y-PSNR/SSIM of the entry and of bicubic on Set5/Set14 at every scale it serves; with
    ``degrade`` on that real-world benchmark (LR made from HR) at REAL_WORLD_SCALES it serves."""
    from srserve.backends import TorchBackend
    from srserve.evaluate import evaluate

    rows = []
    backend = TorchBackend(entry.load(device), device)
    scales = [s for s in entry.scales if s in REAL_WORLD_SCALES] if degrade else entry.scales
    for bench in BENCHMARKS:
        for scale in scales:
            dataset = datasets_root / "benchmark" / bench
            if not dataset.exists():
                continue
            r = evaluate(backend, dataset, scale, progress=False, degrade=degrade)
            rows.append({"dataset": bench, "scale": scale, "psnr": r.psnr, "ssim": r.ssim, "bicubic": r.bicubic_psnr,
                         **({"degrade": degrade, "lr_sha256": r.lr_sha256} if degrade else {})})
    return rows


def rounded(rows: list[dict]) -> list[dict]:
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def where_trained(entry: ModelEntry) -> str:
    hardware = {str(stage.get("hardware", "")) for w in entry.weights for stage in w.source.get("stages") or [w.source]}
    if all(h.startswith("CPU") for h in hardware):
        return "on a CPU"
    return "minutes on one GPU" if not any(h.startswith("CPU") for h in hardware) else "on a CPU and a GPU"


def batch_and_patch(facts: dict) -> str:
    """"batch 16, LR patch 48" of a run or stage; VDSR-like recipes crop HR patches instead."""
    patch = (f"LR patch {facts['lr_patch']}" if facts.get("lr_patch") else
             f"HR patch {facts['hr_patch']}" if facts.get("hr_patch") else "patch ?")
    return f"batch {facts.get('batch', '?')}, {patch}"


def describe_stages(stages: list[dict] | None) -> str:
    if not stages:
        return ""
    parts = [f"{st['iterations']} iterations on {st['hardware']} ({batch_and_patch(st)}, "
             f"{st['wall_time_s']} s, `{st['config']}`)" for st in stages]
    return " In stages: " + "; then ".join(parts) + "."


def render_card(entry: ModelEntry, rows: list[dict]) -> str:
    paper = entry.spec.paper.psnr if entry.spec.paper else {}
    paper_name = entry.spec.paper.name if entry.spec.paper else "paper"
    lines = [f"# {entry.extra.get('display_name') or entry.name}", "", entry.description, "",
             f"Architecture `{entry.architecture}`; scales {entry.scales}; weights are safetensors in this folder.", ""]
    lines += ["## Training", ""]
    for w in entry.weights:
        s = w.source
        size_kb = (entry.path / w.file).stat().st_size // 1024 if (entry.path / w.file).exists() else 0
        run_facts = "" if s.get("stages") else f" ({batch_and_patch(s)})"  # a staged run names them per stage
        lines.append(f"- `{w.file}` (x{'/'.join(map(str, w.scales))}, {size_kb} KiB), hyper-parameters `{w.hparams}`: "
                     f"{s.get('recipe', 'imported')} recipe, {s.get('iterations', '?')} iterations{run_facts}, "
                     f"{s.get('wall_time_s', '?')} s on {s.get('hardware', '?')}, {s.get('date', '')}; "
                     f"data: {', '.join(map(str, s.get('data') or ['?']))}.{describe_stages(s.get('stages'))}"
                     + (f" Started from `{s['init_from']}`." if s.get("init_from") else ""))
    lines += ["", "Training data are the 400 BSDS500 train+test images (481×321), not DIV2K/Flickr2K as in the papers,",
              f"and training ran for a small fraction of the papers' iterations ({where_trained(entry)}): "
              "expect lower PSNR than published.", ""]
    lines += ["## Measured PSNR (Y channel, dB) and SSIM", "",
              "Protocol: MATLAB-bicubic LR, Y of BT.601, `scale` pixels shaved (`srserve eval`).", "",
              f"| dataset | scale | this model | SSIM | bicubic (measured) | gain | {paper_name} (published) |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        published = paper.get((r["dataset"], r["scale"]))
        lines.append(f"| {r['dataset']} | x{r['scale']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['bicubic']:.2f} | "
                     f"{r['psnr'] - r['bicubic']:+.2f} | {'—' if published is None else f'{published:.2f}'} |")
    lines += ["", f"Reproduce: `srserve eval --model {entry.name} --scale {','.join(map(str, entry.scales))} "
              "--dataset ../shared/datasets/benchmark/Set5`", ""]
    lines += render_real_world(entry)
    lines += render_notes(entry)
    return "\n".join(lines)


def render_notes(entry: ModelEntry) -> list[str]:
    """``card_notes`` of model.json (e.g. a target the model misses), kept across re-measurements."""
    notes = entry.extra.get("card_notes") or []
    return ["## Notes", "", *[f"- {note}" for note in notes], ""] if notes else []


def render_real_world(entry: ModelEntry) -> list[str]:
    rows = entry.extra.get("real_world_benchmarks") or []
    if not rows:
        return []
    name = rows[0]["degrade"]
    lines = [f"## Real-world benchmark `{name}` (Y-PSNR, dB)", "",
             f"LR made from the HR images by the fixed, seeded `{name}` pipeline (blur, bicubic downscale, noise, "
             "JPEG; `srserve/realworld.py`); bicubic upscales the same degraded LR.", "",
             "| dataset | scale | this model | SSIM | bicubic | gain |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | x{r['scale']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['bicubic']:.2f} | "
              f"{r['psnr'] - r['bicubic']:+.2f} |" for r in rows]
    lines += ["", f"Reproduce: `srserve eval --model {entry.name} --scale 4 --degrade {name} "
              "--dataset ../shared/datasets/benchmark/Set14`", ""]
    return lines


def write_model_card(entry: ModelEntry, datasets_root: str = "${SR_DATASETS}", device: str = "cpu") -> list[dict]:
    """Measures the entry (on ``device``: a GPU run should not wait for the CPU) on the clean and
    the real-world benchmarks and rewrites its card."""
    rows = measure(entry, expand_path(datasets_root), device)
    real_world = measure(entry, expand_path(datasets_root), device, REAL_WORLD)
    save_measurements(entry, {"benchmarks": rounded(rows), "real_world_benchmarks": rounded(real_world)}, rows)
    return rows


def refresh_real_world(entry: ModelEntry, datasets_root: str = "${SR_DATASETS}", device: str = "cpu") -> list[dict]:
    """Measures only the real-world rows of an entry and re-renders its card with the clean rows
    it already records (the shipped models' clean figures need no second measurement)."""
    rows = rounded(measure(entry, expand_path(datasets_root), device, REAL_WORLD))
    save_measurements(entry, {"real_world_benchmarks": rows}, None)
    return rows


def save_measurements(entry: ModelEntry, measured: dict, clean_rows: list[dict] | None) -> None:
    """Writes ``measured`` into the model.json on disk now (under the repository lock, not onto the
    copy read before minutes of measuring, which would drop a gate verdict recorded meanwhile) and
    renders the card from it; ``clean_rows`` None keeps the clean rows it records."""
    with Repository(entry.path.parent).edit(entry.name) as current:
        if weights_digests(current) != weights_digests(entry):
            raise RepositoryError(f"the weights of {entry.name!r} changed while they were measured; measure again")
        current.extra.update(measured)
        card = render_card(current, clean_rows if clean_rows is not None else current.extra.get("benchmarks", []))
        (current.path / "README.md").write_text(card)
    entry.extra.update(measured)


def render_recorded(entry: ModelEntry) -> list[dict]:
    """Re-renders the card from the figures model.json records, measuring nothing (after a change
    of the card's layout or of a recorded training fact)."""
    save_measurements(entry, {}, None)
    return entry.extra.get("benchmarks", [])


def weights_digests(entry: ModelEntry) -> dict[str, str]:
    return {w.file: w.sha256 for w in entry.weights}


def main(argv: list[str] | None = None) -> int:
    """``python -m srserve.train.card [--repository DIR] [--real-world-only | --render-only] NAME ...``:
    re-measure cards (or only re-render them from model.json)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m srserve.train.card", description=main.__doc__)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--repository", default="model_repository")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--real-world-only", action="store_true", help=f"measure only {REAL_WORLD}, keep the clean rows")
    mode.add_argument("--render-only", action="store_true", help="measure nothing: re-render from model.json")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    repo = Repository(args.repository)
    for name in args.names:
        entry = repo.get(name)
        if args.render_only:
            rows = render_recorded(entry)
        else:
            rows = (refresh_real_world if args.real_world_only else write_model_card)(entry, device=args.device)
        print(name, [(r["dataset"], r["scale"], round(r["psnr"], 2)) for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
