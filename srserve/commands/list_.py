"""``srserve list [--json | --benchmarks [--real-world | --paper-gap] | --architectures]``: the
repository's models plus the built-in ``bicubic``, the measured tables their cards recorded, or
the architecture families ``srserve import`` recognises.

Parameter counts come from the safetensors headers (number of stored values; no network is built),
so listing a large repository is instant.
"""
from __future__ import annotations

HELP = "list the models in the repository (and the built-in bicubic)"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON array of objects")
    p.add_argument("--benchmarks", action="store_true",
                   help="print the PSNR/SSIM each model's card measured (Markdown table)")
    p.add_argument("--architectures", action="store_true",
                   help="print every supported architecture family, the checkpoint files it accepts and the "
                        "licence of the official weights (with --json: a JSON array)")
    p.add_argument("--real-world", action="store_true",
                   help="with --benchmarks: the real-world (real-v1) x4 figures next to the clean ones")
    p.add_argument("--paper-gap", action="store_true",
                   help="with --benchmarks: each model's clean Set5/Set14 PSNR against VDSR's published figures")


def run(args) -> int:
    import json

    from srserve.models.errors import SRError

    if args.architectures:
        rows = architecture_rows()
        print(json.dumps(rows, indent=2) if args.json else format_architectures(rows))
        return 0
    if args.real_world or args.paper_gap:
        if not args.benchmarks:
            raise SRError("--real-world and --paper-gap go with --benchmarks")
        print(real_world_table(args.repository) if args.real_world else paper_gap_table(args.repository))
        return 0
    if args.benchmarks:
        print(benchmark_table(args.repository))
        return 0
    rows = model_rows(args.repository)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def benchmark_table(root) -> str:
    """The measured Y-PSNR table recorded in every model.json (written by ``srserve train``)."""
    from srserve.models.repository import Repository

    repo = Repository(root)
    lines = ["| model | weights | scale | dataset | PSNR (dB) | SSIM | bicubic | gain |", "|---|---|---|---|---|---|---|---|"]
    for name in repo.names():
        entry = repo.get(name)
        title = entry.extra.get("display_name", name)
        for b in sorted(entry.extra.get("benchmarks", []), key=lambda b: (b["scale"], b["dataset"] != "Set5", b["dataset"])):
            weights = entry.path / entry.weights_for(b["scale"]).file
            size = f"{weights.name}, {stored_values(weights) / 1e6:.2f} M params, {weights.stat().st_size / 2**20:.1f} MiB"
            lines.append(f"| `{name}`: {title} | {size} | x{b['scale']} | {b['dataset']} | {b['psnr']:.2f} | {b['ssim']:.4f} "
                         f"| {b['bicubic']:.2f} | {b['psnr'] - b['bicubic']:+.2f} |")
    return "\n".join(lines)


def architecture_rows() -> list[dict]:
    """One dict per family in detection order: name, description, checkpoints, license, input."""
    from srserve.models.registry import ARCHITECTURES

    return [{"name": spec.name, "description": spec.description, "checkpoints": spec.checkpoints,
             "license": spec.license, "input": spec.convention.to_json()} for spec in ARCHITECTURES.values()]


def format_architectures(rows: list[dict]) -> str:
    width = max(len(r["name"]) for r in rows) + 2
    pad = " " * width
    lines = []
    for r in rows:
        lines += [r["name"].ljust(width) + r["description"], f"{pad}checkpoints: {r['checkpoints']}",
                  f"{pad}licence of the official weights: {r['license']}"]
    return "\n".join(lines)


def real_world_table(root) -> str:
    """Real-world (``real-v1``) rows recorded in every model.json beside the clean figures at the
    same scale; the bicubic row is the baseline each measurement scored on the same LR images."""
    from srserve.models.repository import Repository

    repo = Repository(root)
    entries = [repo.get(name) for name in repo.names()]
    measured = [(e, r) for e in entries for r in e.extra.get("real_world_benchmarks", [])]
    if not measured:
        return "no model.json records a real-world benchmark (python -m srserve.train.card --real-world-only NAME)"
    degrade = measured[0][1]["degrade"]
    scales = sorted({r["scale"] for _, r in measured})
    lines = [f"| model | scale | {degrade} Set5 | gain | {degrade} Set14 | gain | clean Set5 | clean Set14 |",
             "|---|---|---|---|---|---|---|---|"]
    baseline = {(r["dataset"], r["scale"]): r["bicubic"] for _, r in measured}
    clean_bicubic = {(b["dataset"], b["scale"]): b["bicubic"] for e in entries for b in e.extra.get("benchmarks", [])}
    for scale in scales:
        lines.append(f"| `bicubic` | x{scale} | {_cell(baseline, 'Set5', scale)} | — | {_cell(baseline, 'Set14', scale)} | — "
                     f"| {_cell(clean_bicubic, 'Set5', scale)} | {_cell(clean_bicubic, 'Set14', scale)} |")
        for e in entries:
            real = {(r["dataset"], r["scale"]): r for r in e.extra.get("real_world_benchmarks", [])}
            if not any(k[1] == scale for k in real):
                continue
            clean = {(b["dataset"], b["scale"]): b["psnr"] for b in e.extra.get("benchmarks", [])}
            gains = {k: f"{r['psnr'] - r['bicubic']:+.2f}" for k, r in real.items()}
            psnr = {k: r["psnr"] for k, r in real.items()}
            lines.append(f"| `{e.name}` | x{scale} | {_cell(psnr, 'Set5', scale)} | {gains.get(('Set5', scale), '—')} "
                         f"| {_cell(psnr, 'Set14', scale)} | {gains.get(('Set14', scale), '—')} "
                         f"| {_cell(clean, 'Set5', scale)} | {_cell(clean, 'Set14', scale)} |")
    return "\n".join(lines)


def paper_gap_table(root) -> str:
    """Every model's measured clean Set5/Set14 PSNR against VDSR's published figure at the same
    scale (the bar every bicubic-trained model is held to) and against its own paper's, from
    model.json. A ``trained_for: real-world`` model is left out: it is judged on real-world inputs."""
    from srserve.models import get_spec
    from srserve.models.repository import Repository

    vdsr = get_spec("vdsr").paper
    repo = Repository(root)
    lines = ["| model | scale | Set5 | VDSR paper | gap | Set14 | VDSR paper | gap | own paper (Set5 / Set14) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in repo.names():
        entry = repo.get(name)
        if entry.trained_for != "bicubic":
            continue
        measured = {(b["dataset"], b["scale"]): b["psnr"] for b in entry.extra.get("benchmarks", [])}
        own = entry.spec.paper
        for scale in sorted({s for _, s in measured}):
            cells = []
            for dataset in ("Set5", "Set14"):
                value, target = measured.get((dataset, scale)), vdsr.psnr.get((dataset, scale))
                gap = f"{value - target:+.2f}" if value is not None and target is not None else "—"
                cells += [_cell(measured, dataset, scale), f"{target:.2f}" if target is not None else "—", gap]
            own_cell = "—"
            if own and (("Set5", scale) in own.psnr or ("Set14", scale) in own.psnr):
                own_cell = f"{own.name}: {_cell(own.psnr, 'Set5', scale)} / {_cell(own.psnr, 'Set14', scale)}"
            lines.append(f"| `{name}` | x{scale} | " + " | ".join(cells) + f" | {own_cell} |")
    return "\n".join(lines)


def _cell(values: dict, dataset: str, scale: int) -> str:
    value = values.get((dataset, scale))
    return "—" if value is None else f"{value:.2f}"


def model_rows(root) -> list[dict]:
    """One dict per model: name, architecture, scales, params, size_bytes, description, ..."""
    from srserve.models.repository import BICUBIC, Repository, RepositoryError, bicubic_model

    repo = Repository(root)
    rows = [{"name": BICUBIC, "architecture": BICUBIC, "scales": bicubic_model().scales, "params": 0,
             "size_bytes": 0, "description": "built-in MATLAB-compatible bicubic interpolation (baseline)",
             "license": None, "provenance": None}]
    for name in repo.names():
        try:
            entry = repo.get(name)
        except RepositoryError as exc:  # one broken entry must not hide the others
            rows.append({"name": name, "architecture": "?", "scales": [], "params": None, "size_bytes": None,
                         "description": f"unreadable: {exc}", "license": None, "provenance": None})
            continue
        files = [entry.path / w.file for w in entry.weights]
        rows.append({
            "name": entry.name, "architecture": entry.architecture, "scales": entry.scales,
            "params": sum(stored_values(f) for f in files),
            "size_bytes": sum(f.stat().st_size for f in files if f.is_file()),
            "description": entry.description, "license": entry.license, "provenance": entry.provenance,
        })
    return rows


def stored_values(path) -> int:
    """Number of values in a safetensors file, read from its header only (0 if unreadable)."""
    from math import prod

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return sum(prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception:  # a missing/corrupt file shows as 0 here; loading it reports the real error
        return 0


def format_table(rows: list[dict]) -> str:
    header = ("name", "architecture", "scales", "params", "size", "licence", "description")
    body = [(r["name"], r["architecture"], ",".join(f"x{s}" for s in r["scales"]) or "-",
             "-" if not r["params"] else f"{r['params'] / 1e6:.2f} M",
             "-" if not r["size_bytes"] else f"{r['size_bytes'] / 2**20:.1f} MiB", r["license"] or "-",
             r["description"])
            for r in rows]
    widths = [max(len(str(row[i])) for row in (header, *body)) for i in range(len(header) - 1)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in (header, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))
    return "\n".join(lines)
