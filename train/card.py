"""Model cards: REPO/NAME/README.md with the training facts and a measured PSNR table."""
from __future__ import annotations

from pathlib import Path

from srserve.models.repository import ModelEntry

from .data import expand_path

BENCHMARKS = ("Set5", "Set14")


def measure(entry: ModelEntry, datasets_root: Path, device: str = "cpu") -> list[dict]:
    """Y-PSNR/SSIM of the entry and of bicubic on Set5/Set14 at every scale it serves."""
    from srserve.backends import TorchBackend
    from srserve.evaluate import evaluate

    rows = []
    backend = TorchBackend(entry.load(device), device)
    for bench in BENCHMARKS:
        for scale in entry.scales:
            dataset = datasets_root / "benchmark" / bench
            if not dataset.exists():
                continue
            r = evaluate(backend, dataset, scale, progress=False)
            rows.append({"dataset": bench, "scale": scale, "psnr": r.psnr, "ssim": r.ssim, "bicubic": r.bicubic_psnr})
    return rows


def where_trained(entry: ModelEntry) -> str:
    hardware = {str(stage.get("hardware", "")) for w in entry.weights for stage in w.source.get("stages") or [w.source]}
    if all(h.startswith("CPU") for h in hardware):
        return "on a CPU"
    return "minutes on one GPU" if not any(h.startswith("CPU") for h in hardware) else "on a CPU and a GPU"


def batch_and_patch(source: dict) -> str:
    """Batch and patch of a single-stage run (a staged run names them per stage)."""
    if source.get("stages"):
        return ""
    return f" (batch {source.get('batch', '?')}, LR patch {source.get('lr_patch', '?')})"


def describe_stages(stages: list[dict] | None) -> str:
    if not stages:
        return ""
    parts = [f"{st['iterations']} iterations on {st['hardware']} (batch {st['batch']}, LR patch {st['lr_patch']}, "
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
        lines.append(f"- `{w.file}` (x{'/'.join(map(str, w.scales))}, {size_kb} KiB), hyper-parameters `{w.hparams}`: "
                     f"{s.get('recipe', 'imported')} recipe, {s.get('iterations', '?')} iterations{batch_and_patch(s)}, "
                     f"{s.get('wall_time_s', '?')} s on {s.get('hardware', '?')}, {s.get('date', '')}; "
                     f"data: {', '.join(map(str, s.get('data') or ['?']))}.{describe_stages(s.get('stages'))}")
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
                     f"{r['psnr'] - r['bicubic']:+.2f} | {published if published is not None else '—'} |")
    lines += ["", f"Reproduce: `srserve eval --model {entry.name} --scale {','.join(map(str, entry.scales))} "
              "--dataset ../shared/datasets/benchmark/Set5`", ""]
    return "\n".join(lines)


def write_model_card(entry: ModelEntry, datasets_root: str = "${SR_DATASETS}", device: str = "cpu") -> list[dict]:
    """Measures the entry (on ``device``: a GPU run should not wait for the CPU) and rewrites its card."""
    rows = measure(entry, expand_path(datasets_root), device)
    entry.extra["benchmarks"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    entry.save()
    (entry.path / "README.md").write_text(render_card(entry, rows))
    return rows
