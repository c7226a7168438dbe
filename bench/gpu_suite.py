"""The GPU suite: every GPU figure the project needs, from one call on the GPU machine.

    bash bench/gpu_suite.sh                  # on the GPU machine: writes $OUT/gpu_suite.{json,md}
    bash bench/gpu_suite.sh --smoke          # anywhere: tiny sizes on the CPU, in about a minute
    python bench/gpu_suite.py --out DIR --budget-s 450 --models edsr,esrgan

Sections, each time-boxed inside ``--budget-s`` (default 450 s, so one call stays under 8
minutes); what does not fit is skipped and listed in the report, never estimated:

1. **environment**: GPU, driver, torch, the device's peak TFLOP/s (``srserve.backends.peaks``),
   each model's FLOPs per LR pixel (``srserve.models.flops``), which engines can run and why not.
2. **compiled build**: the compiled engine's AOTInductor package for EDSR ×4 fp16 (the target
   model; windows up to 256, batches up to 32, max-autotune), built in a subprocess so that the
   time box can stop it; the build time is reported.
3. **engine sweep**: for each shipped model and scale, engines (eager fp32/fp16/bf16, compiled
   fp16 on EDSR ×4, onnxruntime's CUDA provider where importable, TensorRT fp16 on EDSR ×4 where
   importable: its in-process engine build cannot be time-boxed) × batch
   (1, 4, 8, 16, 32) × window (128, 192, 256): ms per batch, LR and output Mpx/s, TFLOP/s, % of
   the peak for the precision, peak GPU memory (torch allocator), and each engine's largest 8-bit
   difference from eager fp32 on the first batch. Points run in passes, the most telling first
   (batch 8 × 192², then 1 × 128² and 32 × 256², then the rest), every engine on the same input
   in turn, so a cut-short sweep still covers every model at the key point.
4. **served path**: ``bench/load.py --device cuda`` on the shipped EDSR ×2 (eager fp16 by
   default: a compiled server would compile its own packages at start) at 16 and 64 clients,
   batching on (8 tiles) and off: p50/p95/p99, served/bare throughput, mean batch size. Needs the
   serving packages (FastAPI, uvicorn, pydantic-settings, python-multipart); the GPU image lacks
   them, so ``bench/gpu_wheels.sh`` downloads them here and ``gpu_suite.sh`` installs them there
   from ``.whl/`` (carry it).
5. **targets**: the issue's targets, computed from the measurements above (met / not met / not
   measured).

The report is rewritten after every section (``gpu_suite.json`` + ``gpu_suite.md``), so a call
killed at its limit still brings back what finished. Without CUDA the suite refuses to start
(one line, exit 2) unless ``--smoke``: then it runs the same code on the CPU with a tiny
random-weight EDSR ×2 (1 block × 8 features) in a temporary repository, windows of 16/24
pixels, batches 1/2, the served path for a second per configuration, and skips the compiled
build unless ``--smoke-compiled`` (an AOTInductor build takes about a minute on a CPU). Its
figures only show that every path runs; its target verdicts read "smoke".
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMAT = "srserve-gpu-suite/1"
BATCHES, WINDOWS = (1, 4, 8, 16, 32), (128, 192, 256)
SMOKE_BATCHES, SMOKE_WINDOWS = (1, 2), (16, 24)
TARGET = ("edsr", 4)  # the target model: EDSR x4, fp16, batches of 8 x 192²
SERVING_MODULES = ("fastapi", "uvicorn", "pydantic_settings", "multipart", "httpx", "prometheus_client")


@dataclass(frozen=True)
class Engine:
    label: str
    backend: str  # create_backend name
    precision: str


ENGINES = (Engine("eager fp32", "torch", "fp32"), Engine("eager fp16", "torch", "fp16"),
           Engine("eager bf16", "torch", "bf16"), Engine("compiled fp16", "compiled", "fp16"),
           Engine("onnxruntime fp16", "onnxruntime", "fp16"), Engine("tensorrt fp16", "tensorrt", "fp16"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_suite_out", help="report folder (default $OUT)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (the test suite runs this)")
    p.add_argument("--smoke-compiled", action="store_true", help="--smoke and build the compiled engine (~1 min)")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for the whole suite (default 450; smoke 240)")
    p.add_argument("--repository", default=None, help="default: model_repository (smoke: a tiny random EDSR)")
    p.add_argument("--models", default=None, help="model names (default: all shipped; smoke: edsr)")
    p.add_argument("--cache", default=None, help="engine cache (default: a fresh temporary folder)")
    p.add_argument("--autotune", choices=["on", "off"], default="on", help="compiled build: Inductor max-autotune")
    p.add_argument("--served-backend", default="torch", help="the load test's server backend (default torch)")
    p.add_argument("--served-precision", default="fp16", help="the load test's precision (default fp16)")
    p.add_argument("--build-package", help=argparse.SUPPRESS)  # internal: the compiled build's subprocess
    args = p.parse_args(argv)
    args.smoke = args.smoke or args.smoke_compiled
    if args.budget_s is None:
        args.budget_s = 240.0 if args.smoke else 450.0
    return args


# --- time ----------------------------------------------------------------------------------------

class Budget:
    """One deadline for the suite; each section gets at most its share and leaves the later
    sections their reserve."""

    def __init__(self, total_s: float):
        self.total = float(total_s)
        self.start = time.monotonic()

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start)

    def box(self, share_s: float, reserve_s: float = 0.0) -> float:
        """Seconds this section may use."""
        return max(0.0, min(share_s, self.left() - reserve_s))


# --- the report ------------------------------------------------------------------------------------

class Report:
    def __init__(self, out: Path, args):
        self.out = out
        self.data = {"format": FORMAT, "mode": "smoke" if args.smoke else "gpu",
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "budget_s": args.budget_s,
                     "sections": {}, "environment": {}, "flops_per_lr_pixel": {}, "engines": {}, "engine_notes": {},
                     "compiled_build": {}, "sweep": [], "served": {}, "targets": [], "skipped": []}

    def section(self, name: str, seconds: float, status: str = "done") -> None:
        self.data["sections"][name] = {"seconds": round(seconds, 1), "status": status}

    def skip(self, what: str) -> None:
        self.data["skipped"].append(what)
        print(f"skipped: {what}", flush=True)

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu_suite.json", json.dumps(self.data, indent=1, default=str) + "\n"),
                           ("gpu_suite.md", markdown(self.data))):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text)
            tmp.replace(self.out / name)


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(d: dict) -> str:
    env = d["environment"]
    lines = [f"# GPU suite ({d['mode']}), {d['started']}", "",
             f"`{d['command']}`: {env.get('device', '?')}, torch {env.get('torch', '?')}, "
             f"CUDA {env.get('cuda', '-')}, driver {env.get('driver', '-')}, budget {d['budget_s']:.0f} s.", "",
             f"Peak ({env.get('peak', {}).get('source', 'none known')}): "
             + ", ".join(f"{k} {v} TFLOP/s" for k, v in env.get("peak", {}).get("tflops", {}).items()), "",
             f"Weights rounded to fp16 to travel (timings unaffected; the max Δ column compares engines on "
             f"those weights): {', '.join(d.get('weights_rounded_to_fp16') or []) or 'none'}.", "",
             "## Sections", "", "| section | seconds | status |", "|---|---|---|"]
    lines += [f"| {n} | {s['seconds']} | {s['status']} |" for n, s in d["sections"].items()]
    lines += ["", "## Engines", "", "| engine | status |", "|---|---|"]
    lines += [f"| {n} | {s} |" for n, s in {**d["engines"], **d["engine_notes"]}.items()]
    if d["compiled_build"]:
        lines += ["", "## Compiled build", "", "```", json.dumps(d["compiled_build"], indent=1), "```"]
    lines += ["", "## Engine sweep", "",
              "TFLOP/s = FLOPs per LR pixel (convolutions and matrix products, `srserve.models.flops`) × LR "
              "pixels per second; % of the dense peak for the precision run (fp32 on CUDA: TF32). Memory: "
              "peak of torch's allocator during the point (not onnxruntime/TensorRT's own).", "",
              "| model | engine | batch | window | ms/batch | LR Mpx/s | out Mpx/s | TFLOP/s | % peak | GiB | "
              "max Δ vs fp32 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["sweep"]:
        if "error" in r:
            lines.append(f"| {r['model']} x{r['scale']} | {r['engine']} | {r['batch']} | {r['window']} | "
                         f"{r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['model']} x{r['scale']} | {r['engine']} | {r['batch']} | {r['window']} | "
                     f"{fmt(r['ms_per_batch'], 2)} | {fmt(r['lr_mpx_s'], 2)} | {fmt(r['out_mpx_s'], 1)} | "
                     f"{fmt(r['tflops'], 3)} | {fmt(r['pct_of_peak'], 2)} | {fmt(r['peak_gib'], 2)} | "
                     f"{fmt(r.get('max_levels_vs_eager_fp32'))} |")
    served = d["served"]
    if served.get("runs"):
        lines += ["", "## Served path (bench/load.py)", "", f"`{served.get('command', '')}`", "",
                  "| clients | batching | req/s | out MP/s | p50 s | p95 s | p99 s | mean batch | served/bare |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for run in served["runs"]:
            lines.append(f"| {run['clients']} | {run['batching']} | {fmt(run['rps'], 2)} | {fmt(run['mp_per_s'], 2)} "
                         f"| {fmt(run['p50_s'], 3)} | {fmt(run['p95_s'], 3)} | {fmt(run['p99_s'], 3)} | "
                         f"{fmt(run['mean_batch'], 2)} | {fmt(run.get('served_over_bare'), 2)} |")
        for key in ("bare_on", "bare_off"):
            if key in served:
                lines.append(f"\n{key}: {fmt(served[key].get('mp_per_s'), 2)} output MP/s")
    lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['verdict']} |" for t in d["targets"]]
    if d["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in d["skipped"]]
    return "\n".join(lines) + "\n"


# --- environment -----------------------------------------------------------------------------------

def environment(device) -> dict:
    import torch

    from srserve.backends.peaks import device_peak

    env = {"python": platform.python_version(), "torch": torch.__version__, "device_type": device.type,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                   memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                   driver=nvidia_smi("driver_version"))
    else:
        from srserve.backends.peaks import _cpuinfo

        env["device"] = _cpuinfo().get("model name", platform.processor() or "CPU")
    peak = device_peak(device)
    env["peak"] = peak.to_json() if peak else {"source": f"no peak known for {env['device']}", "tflops": {}}
    return env


def nvidia_smi(field: str) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def engine_status(engine: Engine, device) -> str:
    """"ok" or why the engine cannot run here."""
    import importlib.util

    from srserve.backends.cuda import compile_toolchain_missing, tensorrt_available

    if engine.backend == "torch":
        return "ok"
    if engine.backend == "compiled":
        missing = compile_toolchain_missing(device.type)
        return f"needs {missing}" if missing else "ok"
    if engine.backend == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
            return "onnxruntime/onnx not installed"
        if device.type == "cuda":
            from srserve.backends.onnxruntime_backend import has_gpu_provider

            return "ok" if has_gpu_provider() else "this onnxruntime has no CUDA/TensorRT provider (CPU build)"
        return "ok"
    if device.type != "cuda":
        return "TensorRT needs a GPU"
    return "ok" if tensorrt_available() else "tensorrt not importable"


# --- the compiled build (a subprocess, so the time box can stop it) -------------------------------

def build_package_main(spec: dict) -> int:
    """Internal: builds one package into the cache and prints its info as JSON."""
    import torch

    from srserve.export.aoti import aoti_cache, load_compiled
    from srserve.models.repository import Repository

    device = torch.device(spec["device"])
    model = Repository(spec["repository"]).load(spec["model"], "cpu", [spec["scale"]])
    for net in model.nets.values():
        net.to(device)
    start = time.perf_counter()
    _, info = load_compiled(model, spec["scale"], spec["precision"], cache=aoti_cache(spec["cache"]), device=device,
                            max_side=spec["max_side"], max_batch=spec["max_batch"], autotune=spec["autotune"])
    print(json.dumps({**info, "seconds": round(time.perf_counter() - start, 1)}))
    return 0


def build_compiled(args, device, cache: Path, box_s: float, max_side: int, max_batch: int) -> dict:
    spec = {"repository": args.repository, "model": TARGET[0] if not args.smoke else "edsr",
            "scale": TARGET[1] if not args.smoke else 2, "precision": "fp16", "device": str(device),
            "cache": str(cache), "max_side": max_side, "max_batch": max_batch,
            "autotune": args.autotune == "on" and device.type == "cuda"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--build-package", json.dumps(spec)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(1.0, box_s))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # Inductor's compile workers too
        proc.communicate()
        return {**spec, "status": f"stopped: the build exceeded its {box_s:.0f} s box"}
    seconds = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        return {**spec, "status": "failed", "seconds": seconds, "error": (err.strip().splitlines() or ["?"])[-1][:400]}
    return {**spec, "status": "built", "wall_seconds": seconds, **json.loads(out.strip().splitlines()[-1])}


# --- the sweep ---------------------------------------------------------------------------------------

def point_passes(batches, windows) -> list[tuple[int, int]]:
    """(batch, window) in the order the sweep runs them: the most telling first."""
    first = [(8, 192), (1, 128), (32, 256)] if (8 in batches and 192 in windows) else \
        [(batches[len(batches) // 2], windows[len(windows) // 2])]
    rest = [(b, w) for w in windows for b in batches if (b, w) not in first]
    return [p for p in first if p[0] in batches and p[1] in windows] + rest


def create_engines(loaded, scale: int, device, engines, args, cache: Path, package_ok: bool, max_batch: int,
                   windows) -> tuple[dict, dict]:
    """{label: backend} of the engines that can run this model, and {label: note} of the rest."""
    from srserve.backends import create_backend
    from srserve.backends.compiled_backend import CompiledBackend
    from srserve.export import ExportBuilder
    from srserve.models.repository import Repository

    made, notes = {}, {}
    is_target = (loaded.name, scale) == (("edsr", 2) if args.smoke else TARGET)
    for engine in engines:
        if engine.backend == "compiled" and not (is_target and package_ok):
            notes[engine.label] = "no package built for this model" if is_target else "compiled on the target model only"
            continue
        if engine.backend == "tensorrt" and not is_target:  # an engine build takes minutes and no box can stop it
            notes[engine.label] = "TensorRT on the target model only"
            continue
        try:
            if engine.backend == "compiled":  # this scale only: the others have no package
                only = Repository(args.repository).load(loaded.name, "cpu", [scale])
                made[engine.label] = CompiledBackend(only, device, engine.precision, cache_dir=cache,
                                                     builder=ExportBuilder(), max_batch=max_batch,
                                                     windows=list(windows), force_precision=True,
                                                     autotune=args.autotune == "on" and device.type == "cuda")
            else:
                made[engine.label] = create_backend(loaded, engine.backend, device=device, precision=engine.precision,
                                                    force_precision=True, cache_dir=cache, builder=ExportBuilder(),
                                                    tile=tile_for_window(loaded, scale, max(windows)),
                                                    max_batch=max_batch)
        except Exception as exc:  # one engine's failure must not cost the others' figures
            notes[engine.label] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    return made, notes


def tile_for_window(model, scale: int, window: int) -> int:
    """The core tile whose window (``tile_window``) reaches ``window``: TensorRT profiles cover it."""
    from srserve.backends.cuda import tile_window

    tile = 16
    while tile_window(model, scale, tile) < window:
        tile += 16
    return tile


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(backend, x, scale: int, device, min_seconds: float) -> dict:
    """Mean ms per call after one warm-up: at least 3 calls or ``min_seconds``, one if a call is slow."""
    import torch

    backend.run(x, scale)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    calls, start = 0, time.perf_counter()
    while True:
        backend.run(x, scale)
        calls += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3 or elapsed > 2.0:
            break
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"calls": calls, "seconds": elapsed, "peak_gib": peak}


def max_levels(a, b) -> int:
    return int(((a.float().clamp(0, 1) - b.float().clamp(0, 1)).abs() * 255).round().max())


def sweep(args, device, models: list[tuple], report: Report, box_s: float, cache: Path, package_ok: bool) -> None:
    from srserve.backends.peaks import DevicePeak
    from srserve.models.flops import flops_per_lr_pixel

    deadline = time.monotonic() + box_s
    batches, windows = (SMOKE_BATCHES, SMOKE_WINDOWS) if args.smoke else (BATCHES, WINDOWS)
    peak = report.data["environment"]["peak"]
    device_peak = DevicePeak(peak.get("device", ""), peak.get("tflops", {}))
    runnable = [e for e in ENGINES if report.data["engines"].get(e.label) == "ok"]
    prepared = {}
    for loaded, scale in models:
        if time.monotonic() > deadline:
            report.skip(f"sweep of {loaded.name} x{scale}: engines not created (time box)")
            continue
        made, notes = create_engines(loaded, scale, device, runnable, args, cache, package_ok, max(batches), windows)
        report.data["engine_notes"].update({f"{label}, {loaded.name} x{scale}": note for label, note in notes.items()})
        prepared[(loaded.name, scale)] = (made, flops_per_lr_pixel(loaded, scale))
    points = point_passes(batches, windows)
    for i, (batch, window) in enumerate(points):
        for (name, scale), (made, flops) in prepared.items():
            if time.monotonic() > deadline:
                report.skip(f"sweep: {len(points) - i} of {len(points)} (batch, window) points not run on some or all "
                            f"models, from {batch} x {window}² on (time box)")
                return
            rows = sweep_point(made, name, scale, flops, batch, window, device, device_peak, args.smoke, first=i == 0)
            report.data["sweep"] += rows
        report.write()


def sweep_point(made: dict, name: str, scale: int, flops: float, batch: int, window: int, device, peak,
                smoke: bool, first: bool) -> list[dict]:
    """Every engine of one model on one (batch, window) input; on the first point also each
    engine's largest 8-bit difference from eager fp32 on two of the tiles."""
    import torch

    from srserve.backends.peaks import efficiency

    g = torch.Generator().manual_seed(batch * 1000 + window)
    x = torch.rand(batch, 3, window, window, generator=g).to(device)
    reference = None
    if first and "eager fp32" in made:
        with torch.inference_mode():
            reference = made["eager fp32"].run(x[:2], scale)
    rows = []
    for label, backend in made.items():
        row = {"model": name, "scale": scale, "engine": label, "batch": batch, "window": window}
        rows.append(row)
        before = dict(backend.describe()["batches"]) if backend.name == "compiled" else None
        try:
            with torch.inference_mode():
                timing = measure(backend, x, scale, device, 0.05 if smoke else 0.2)
                if reference is not None and label != "eager fp32":
                    row["max_levels_vs_eager_fp32"] = max_levels(backend.run(x[:2], scale), reference)
        except Exception as exc:  # out of memory at a large point, an engine refusing a shape
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        seconds = timing["seconds"] / timing["calls"]
        lr_px_s = batch * window * window / seconds
        e = efficiency(flops, lr_px_s, peak, backend.precision, device.type)
        row.update(precision=backend.precision, calls=timing["calls"], ms_per_batch=seconds * 1e3,
                   lr_mpx_s=lr_px_s / 1e6, out_mpx_s=lr_px_s * scale * scale / 1e6, tflops=e["tflops"],
                   peak_kind=e["peak_kind"], pct_of_peak=e["pct_of_peak"], peak_gib=timing["peak_gib"])
        if before is not None:  # which path the compiled engine took at this point (graph, package, eager)
            row["compiled_batches"] = {k: v - before[k] for k, v in backend.describe()["batches"].items()}
        print(f"{name} x{scale} {label:<18} {batch:>3} x {window}²: {seconds * 1e3:8.2f} ms "
              f"{lr_px_s / 1e6:8.2f} LR Mpx/s {e['tflops']:8.3f} TFLOP/s {fmt(e['pct_of_peak'], 2)}% of "
              f"{e['peak_kind']}", flush=True)
    return rows


# --- the served path --------------------------------------------------------------------------------

def served(args, device, report: Report, box_s: float) -> None:
    import importlib.util

    missing = [m for m in SERVING_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        report.skip(f"served path: {', '.join(missing)} not installed (run bench/gpu_wheels.sh here and carry .whl)")
        return
    # bare on/off once each, then each client count against two servers (about 20 s to start each)
    seconds = 1.0 if args.smoke else max(3.0, min(12.0, (box_s - 60.0) / 6))
    out = Path(report.out) / "load.json"
    cmd = [sys.executable, str(ROOT / "bench" / "load.py"), "--device", device.type, "--repository", args.repository,
           "--model", "edsr", "--scale", "2", "--clients", "2,4" if args.smoke else "16,64", "--seconds",
           f"{seconds:g}", "--batch", "2" if args.smoke else "8", "--tile-size", "16" if args.smoke else "128",
           "--sizes", "24x24,32x24" if args.smoke else "256x256,384x256,512x384", "--backend", args.served_backend,
           "--precision", args.served_precision, "--json-out", str(out)]
    report.data["served"]["command"] = " ".join(["python", "bench/load.py"] + cmd[2:])
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, box_s))
    except subprocess.TimeoutExpired:
        report.skip(f"served path: bench/load.py exceeded its {box_s:.0f} s box")
        return
    if done.returncode != 0 or not out.is_file():
        report.skip(f"served path failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:300]}")
        return
    result = json.loads(out.read_text())
    out.unlink()
    report.data["served"].update(summarise_load(result))


def summarise_load(result: dict) -> dict:
    """The load test's JSON as rows: one per (clients, batching), with served/bare."""
    runs = []
    for clients, per in result["served"].items():
        for batching in ("on", "off"):
            if batching not in per:
                continue
            r = per[batching]
            bare = result.get(f"bare_{batching}", {}).get("mp_per_s")
            runs.append({"clients": int(clients), "batching": batching, **{k: r[k] for k in (
                "requests", "rps", "mp_per_s", "p50_s", "p95_s", "p99_s", "mean_batch", "busy", "statuses")},
                "tflops": r.get("tflops"), "pct_of_peak": r.get("pct_of_peak"),
                "served_over_bare": r["mp_per_s"] / bare if bare else None})
    return {"runs": runs, "bare_on": result.get("bare_on", {}), "bare_off": result.get("bare_off", {}),
            "args": result.get("args", {})}


# --- targets ----------------------------------------------------------------------------------------

def targets(data: dict, smoke: bool) -> list[dict]:
    model, scale = ("edsr", 2) if smoke else TARGET
    batch, window = (2, 24) if smoke else (8, 192)
    rows = [r for r in data["sweep"] if (r["model"], r["scale"], r["batch"], r["window"]) == (model, scale, batch, window)
            and "error" not in r]
    fp32 = next((r for r in rows if r["engine"] == "eager fp32"), None)
    fp16 = [r for r in rows if r.get("precision") == "fp16"]
    best = max(fp16, key=lambda r: r["lr_mpx_s"], default=None)
    out = []
    what = f"{model} x{scale} fp16, {batch} x {window}²"
    if best and fp32:
        ratio = best["lr_mpx_s"] / fp32["lr_mpx_s"]
        out.append(verdict(f"best engine ≥ 3× eager fp32 ({what})", f"{best['engine']}: {ratio:.2f}×", ratio >= 3, smoke))
    else:
        out.append(verdict(f"best engine ≥ 3× eager fp32 ({what})", "not measured", None))
    if best and best.get("pct_of_peak") is not None:
        out.append(verdict(f"best engine ≥ 25% of the dense fp16 peak ({what})",
                           f"{best['engine']}: {best['pct_of_peak']:.1f}%", best["pct_of_peak"] >= 25, smoke))
    else:
        out.append(verdict(f"best engine ≥ 25% of the dense fp16 peak ({what})", "not measured", None))
    runs = {(r["clients"], r["batching"]): r for r in data["served"].get("runs", [])}
    clients = 2 if smoke else 16
    on, off = runs.get((clients, "on")), runs.get((clients, "off"))
    if on and on.get("served_over_bare") is not None:
        out.append(verdict(f"served ≥ 0.9× bare ({clients} clients, batching on)", f"{on['served_over_bare']:.2f}",
                           on["served_over_bare"] >= 0.9, smoke))
    else:
        out.append(verdict(f"served ≥ 0.9× bare ({clients} clients)", "not measured", None))
    if on and off:
        ratio = on["mp_per_s"] / off["mp_per_s"] if off["mp_per_s"] else float("inf")
        out.append(verdict(f"batching on ≥ 2× off ({clients} clients)", f"{ratio:.2f}×", ratio >= 2, smoke))
        out.append(verdict(f"p99 ≤ 2× p50 ({clients} clients, batching on)",
                           f"{on['p99_s'] / on['p50_s']:.2f}×", on["p99_s"] <= 2 * on["p50_s"], smoke))
    else:
        out.append(verdict(f"batching on ≥ 2× off ({clients} clients)", "not measured", None))
        out.append(verdict(f"p99 ≤ 2× p50 ({clients} clients)", "not measured", None))
    return out


def verdict(target: str, measured: str, ok: bool | None, smoke: bool = False) -> dict:
    if ok is None:
        return {"target": target, "measured": measured, "verdict": "not measured"}
    return {"target": target, "measured": measured, "verdict": "smoke" if smoke else ("met" if ok else "not met")}


# --- main ----------------------------------------------------------------------------------------------

def smoke_repository(root: Path) -> str:
    """A tiny random-weight EDSR ×2 (speed and structure only; nothing here is about quality)."""
    import torch

    from srserve.models.registry import build_network
    from srserve.models.repository import Repository

    torch.manual_seed(0)
    hparams = {"n_resblocks": 1, "n_feats": 8, "scale": 2}
    Repository(root).add_weights("edsr", "edsr", hparams, build_network("edsr", hparams).state_dict())
    return str(root)


def shipped_models(args, device) -> list[tuple]:
    """(LoadedModel, scale) of the models to sweep, the target first."""
    from srserve.models.repository import Repository

    repo = Repository(args.repository)
    names = args.models.split(",") if args.models else (["edsr"] if args.smoke else repo.names())
    pairs = []
    for name in names:
        loaded = repo.load(name, "cpu")
        pairs += [(loaded, s) for s in (loaded.scales[:1] if args.smoke else loaded.scales)]
    target = ("edsr", 2) if args.smoke else TARGET
    return sorted(pairs, key=lambda p: (p[0].name, p[1]) != target)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.build_package:
        return build_package_main(json.loads(args.build_package))
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_suite: no CUDA GPU here (torch.cuda.is_available() is False); run it on the GPU machine, "
              "or with --smoke on a CPU")
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    budget = Budget(args.budget_s)
    report = Report(Path(args.out), args)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="srserve-gpu-suite-"))
    if args.repository is None:
        args.repository = smoke_repository(cache / "repository") if args.smoke else str(ROOT / "model_repository")
    report.data["repository"] = args.repository
    os.environ["SR_ENGINE_CACHE"] = str(cache)
    torch.manual_seed(0)

    started = time.monotonic()
    report.data["environment"] = environment(device)
    models = shipped_models(args, device)
    from srserve.models.flops import flops_per_lr_pixel

    report.data["flops_per_lr_pixel"] = {f"{m.name} x{s}": flops_per_lr_pixel(m, s) for m, s in models}
    # bench/gpu_pack.py rounds some weights to fp16 so that the call fits: say which
    report.data["weights_rounded_to_fp16"] = sorted({m.name for m, _ in models if m.entry.extra.get("gpu_pack")})
    report.data["engines"] = {e.label: engine_status(e, device) for e in ENGINES}
    report.section("environment", time.monotonic() - started)
    report.write()
    print(json.dumps(report.data["environment"]), flush=True)

    windows, batches = (SMOKE_WINDOWS, SMOKE_BATCHES) if args.smoke else (WINDOWS, BATCHES)
    package_ok = False
    started = time.monotonic()
    if report.data["engines"]["compiled fp16"] != "ok":
        report.skip(f"compiled build: {report.data['engines']['compiled fp16']}")
    elif args.smoke and not args.smoke_compiled:
        report.skip("compiled build: not in --smoke (about a minute on a CPU; --smoke-compiled builds it)")
    else:
        box = budget.box(200.0 if not args.smoke else 150.0, reserve_s=60.0 if args.smoke else 200.0)
        info = build_compiled(args, device, cache, box, max(windows), max(batches))
        report.data["compiled_build"] = info
        package_ok = info["status"] == "built"
        if not package_ok:
            report.skip(f"compiled fp16: {info['status']} {info.get('error', '')}".strip())
    report.section("compiled build", time.monotonic() - started, report.data["compiled_build"].get("status", "skipped"))
    report.write()

    started = time.monotonic()
    sweep(args, device, models, report, budget.box(260.0 if not args.smoke else 120.0,
                                                   reserve_s=100.0 if not args.smoke else 40.0), cache, package_ok)
    report.section("engine sweep", time.monotonic() - started)
    report.write()

    started = time.monotonic()
    box = budget.box(150.0, reserve_s=5.0)
    if box < (15.0 if args.smoke else 45.0):
        report.skip(f"served path: {box:.0f} s left")
    else:
        served(args, device, report, box)
    report.section("served path", time.monotonic() - started)
    report.data["targets"] = targets(report.data, args.smoke)
    report.data["total_seconds"] = round(time.monotonic() - budget.start, 1)
    report.write()
    print(markdown(report.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
