"""OpenVINO on the CPU: the parity-checked fp32 ONNX graph compiled for this CPU, fp32 or bf16.

One compiled model per (graph, scale, precision), with dynamic batch/height/width like the
ONNX graphs; DASR runs its encoder graph (fp32: once per image) and its SR graph. Which scales
run bf16 is the precision policy's decision (``base.resolve_cpu_bf16``: native bf16 and the CPU
bf16 gate recorded in model.json). bf16 means one of two things, after the architecture's spec
(``ArchSpec.cpu_bf16_body``):

* the whole graph under OpenVINO's ``INFERENCE_PRECISION_HINT=bf16`` (OpenVINO keeps the graph's
  tail after the last convolution in fp32 itself);
* only the named body: its layers get explicit bf16 inputs and weights while the hint stays
  f32, so the layers that see the image itself stay fp32 (VDSR, MDSR).

OpenVINO's default hint on a bf16 CPU is bf16, so fp32 is always set explicitly. Compiled
models are cached by OpenVINO in ``$SR_ENGINE_CACHE/openvino`` (``CACHE_DIR``), keyed by a hash
of the graph (weights included), the configuration and the CPU, so a restart imports them
instead of compiling. Each compiled (graph, precision) is checked against PyTorch once by the
builder's ``check_parity`` (the export criteria: fp32 within one 8-bit level on random and real
inputs, bf16 finite and within a few levels on the real image), remembered in ``parity.json`` beside the cache per graph sha256,
precision, scope, OpenVINO version and CPU. An fp32 graph that fails is an error; a scale whose
bf16 graph fails (to compile, or its check) runs fp32 instead (said in ``precision_note``),
unless bf16 was forced.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import torch

from srserve.models.repository import LoadedModel, cpu_bf16_scope

from .artifacts import default_cache_dir
from .base import BackendError, GraphEngine, PrecisionGuard, resolve_cpu_bf16
from .cpu import bf16_flags, cpu_model
from .sources import ArtifactBuilder, OnnxArtifacts

log = logging.getLogger("srserve.backends")

CACHE_FOLDER = "openvino"
PARITY_FILE = "parity.json"
HINTS = {"fp32": "f32", "bf16": "bf16"}  # srserve precision -> INFERENCE_PRECISION_HINT
BODY_OPS = ("Convolution", "Relu", "PRelu", "Clamp", "Add", "Multiply")  # what a bf16 body runs in bf16


@functools.lru_cache(maxsize=1)
def core():
    """One ``openvino.Core`` per process (it owns the plugins and their thread pools)."""
    import openvino as ov

    return ov.Core()


def openvino_version() -> str:
    import openvino as ov

    return ov.get_version().split("-")[0]


def in_body(node_name: str, bodies: tuple[str, ...]) -> bool:
    """Whether an ONNX node belongs to one of the network's submodules ``bodies``. The TorchScript
    exporter names nodes after module paths (a list's items as ``name.0``), and ``SRNet`` holds
    the network as ``net``, so a body's nodes are ``.../net/<body>/...`` or ``.../net/<body>.N/...``
    in the SR and the ensemble graphs alike."""
    return any(re.search(f"/net/{re.escape(body)}[./]", node_name) for body in bodies)


def convert_body_to_bf16(model, bodies: tuple[str, ...]) -> int:
    """Runs the bodies' layers (``BODY_OPS``) of an ``openvino.Model`` in bf16: their fp32 inputs
    (activations and weights) get a Convert to bf16, their outputs a Convert back to fp32 where
    they leave the bodies. Returns how many operations were converted."""
    import openvino as ov
    import openvino.opset13 as ops

    chosen = [op for op in model.get_ordered_ops() if op.get_type_name() in BODY_OPS
              and in_body(op.get_friendly_name(), bodies)]
    ids = {id(op) for op in chosen}
    for op in chosen:
        for port in op.inputs():
            source = port.get_source_output()
            if source.get_element_type() == ov.Type.f32:
                port.replace_source_output(ops.convert(source, ov.Type.bf16).output(0))
        op.validate_and_infer_types()
    for op in chosen:
        for target in list(op.output(0).get_target_inputs()):
            if id(target.get_node()) not in ids:
                target.replace_source_output(ops.convert(op.output(0), ov.Type.f32).output(0))
    model.validate_nodes_and_infer_types()
    return len(chosen)


class CompiledGraph:
    """One compiled model and its infer request (not thread-safe, hence the lock)."""

    def __init__(self, compiled, from_cache: bool, seconds: float):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.inputs = [port.get_any_name() for port in compiled.inputs]
        self.from_cache = from_cache
        self.seconds = seconds
        self.runs = runtime_precision(compiled)
        self._lock = threading.Lock()

    def __call__(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        arrays = {name: np.ascontiguousarray(t.detach().cpu().float().numpy()) for name, t in feeds.items()}
        with self._lock:
            self.request.infer(arrays)
            out = self.request.get_output_tensor(0).data.copy()
        return torch.from_numpy(out)


def runtime_precision(compiled) -> str:
    """``bf16`` when any convolution of the compiled model runs in bf16 (what the CPU plugin
    did, not what was asked: without native bf16 it runs fp32), else ``fp32``."""
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution" and info["runtimePrecision"].astype(str) == "bf16":
            return "bf16"
    return "fp32"


class ParityRecord:
    """``parity.json``: parity verdicts of compiled graphs, so each is checked once per CPU."""

    def __init__(self, folder: Path):
        self.path = folder / PARITY_FILE

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> dict | None:
        return self._read().get(key)

    def put(self, key: str, parity: dict) -> None:
        """Read-modify-replace; a concurrent writer can at worst drop an entry (checked again)."""
        data = self._read()
        data[key] = parity
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{PARITY_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.path)


def passed(parity: dict, precision: str) -> bool:
    """fp32 must pass on every check input; bf16 on the real image: random noise is not an image,
    and what bf16 costs on images is the CPU bf16 gate's question (measured on Set5)."""
    if precision == "fp32" or "real" not in parity:
        return bool(parity.get("passed"))
    return bool(parity["real"].get("passed"))


class OpenVinoBackend(GraphEngine):
    name = "openvino"
    selected = "requested"

    def __init__(self, model: LoadedModel, device: str | torch.device = "cpu", precision: str = "auto", *,
                 cache_dir: str | Path | None = None, builder: ArtifactBuilder | None = None,
                 threads: int | None = None, self_ensemble: bool = False, force_precision: bool = False):
        self.device = torch.device(device)
        if self.device.type != "cpu":
            raise BackendError(f"the openvino backend runs on the CPU, not {self.device}; use --device cpu")
        self.model = model
        self.requested_precision = precision
        self.force_precision = force_precision
        self.bf16_isa = bf16_flags()
        resolved = {s: resolve_cpu_bf16(precision, model, s, has_bf16=bool(self.bf16_isa), force=force_precision)
                    for s in model.scales}
        self.precisions = {s: p for s, (p, _) in resolved.items()}
        self.notes = [n for _, n in resolved.values() if n]
        self.bf16_body = model.spec.cpu_bf16_body
        self.cache_dir = Path(cache_dir or default_cache_dir()) / CACHE_FOLDER
        self.artifacts = OnnxArtifacts(model, cache_dir, builder=builder)
        self.builder = builder
        self.parity = ParityRecord(self.cache_dir)
        self.threads = int(threads or torch.get_num_threads())
        self.self_ensemble = self_ensemble
        self._graphs: dict[tuple[str, int, str], CompiledGraph] = {}
        self.compiled: dict[str, dict] = {}
        for scale in model.scales:  # compile now: the first request must not pay for it
            self._load_scale(scale)
        self._guard = PrecisionGuard(self.precision, f"{model.name}/openvino")

    @property
    def precision(self) -> str:
        """The precision every scale runs, or ``mixed`` (per scale in ``precisions``)."""
        values = set(self.precisions.values())
        return values.pop() if len(values) == 1 else "mixed"

    @property
    def precision_note(self) -> str:
        return "; ".join(dict.fromkeys(self.notes))

    def _load_scale(self, scale: int) -> None:
        kinds = ["sr"] + (["ensemble"] if self.self_ensemble else [])
        if self.model.needs_degradation:
            self._graph("degradation", scale, "fp32")
        try:
            for kind in kinds:
                self._graph(kind, scale, self.precisions[scale])
        except BackendError as exc:
            if self.precisions[scale] == "fp32":
                raise
            self.notes.append(f"x{scale}: {exc}; using fp32")
            log.warning("%s x%d: bf16 failed; running fp32 (%s)", self.model.name, scale, exc)
            self.precisions[scale] = "fp32"
            for kind in kinds:
                self._graph(kind, scale, "fp32")

    # --- compiling ------------------------------------------------------------------------------
    def _graph(self, kind: str, scale: int, precision: str) -> CompiledGraph:
        key = (kind, int(scale), precision)
        if key not in self._graphs:
            self.model.net(scale)  # a clear error for a scale the model does not serve
            path, artifact = self.artifacts.get(kind, scale, "fp32")
            graph = self._compile(path, precision)
            label = f"{kind} x{scale} {precision}"
            self.compiled[label] = {"graph": str(path), "from_cache": graph.from_cache,
                                    "compile_s": round(graph.seconds, 3), "runs": graph.runs,
                                    "scope": self._scope(precision)}
            parity = self._check(kind, int(scale), precision, artifact.sha256, graph, label)
            self.compiled[label]["parity"] = parity["summary"] if parity else "not checked (no builder)"
            self._graphs[key] = graph
        return self._graphs[key]

    def _scope(self, precision: str) -> str | None:
        return cpu_bf16_scope(self.model.spec) if precision == "bf16" else None

    def _compile(self, path: Path, precision: str) -> CompiledGraph:
        hint = precision
        started = time.perf_counter()
        try:
            # an in-memory model: OpenVINO then hashes the graph with its weights for the cache,
            # so a new graph at the same path never imports a stale compiled model
            model = core().read_model(str(path))
            if precision == "bf16" and self.bf16_body:
                if not convert_body_to_bf16(model, self.bf16_body):
                    raise BackendError(f"{path.name} has no operations in the bf16 body {self.bf16_body!r}")
                hint = "fp32"  # the body's types are explicit; nothing else is lowered
            config = {"INFERENCE_PRECISION_HINT": HINTS[hint], "INFERENCE_NUM_THREADS": self.threads,
                      "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": str(self.cache_dir)}
            compiled = core().compile_model(model, "CPU", config)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"OpenVINO cannot compile {path.name} of model {self.model.name!r}: {first}") from None
        return CompiledGraph(compiled, bool(compiled.get_property("LOADED_FROM_CACHE")),
                             time.perf_counter() - started)

    def _check(self, kind: str, scale: int, precision: str, sha256: str, graph: CompiledGraph,
               label: str) -> dict | None:
        """The parity verdict of this compiled graph (checked once per graph, precision, scope,
        OpenVINO version and CPU); a failing graph raises unless bf16 was forced."""
        if self.builder is None:
            return None
        key = " ".join([sha256[:16], precision, self._scope(precision) or "", f"openvino-{openvino_version()}",
                        cpu_model(), "+".join(self.bf16_isa)])
        parity = self.parity.get(key)
        if parity is None:
            parity = self.builder.check_parity(self.model, kind, scale, precision, graph)
            self.parity.put(key, parity)
        if not passed(parity, precision):
            message = f"OpenVINO {label} differs from PyTorch ({parity.get('summary', parity)})"
            if precision == "fp32" or not self.force_precision:
                raise BackendError(f"model {self.model.name!r}: {message}")
            self.notes.append(f"{message}; forced")
        return parity

    # --- running --------------------------------------------------------------------------------
    @property
    def fp16_fallbacks(self) -> int:
        return self._guard.fallbacks

    def _run_graph(self, kind: str, x: torch.Tensor, scale: int, degradation: torch.Tensor | None) -> torch.Tensor:
        scale = int(scale)
        self.model.net(scale)  # raises the user-facing scale error
        precision = self.precisions[scale]
        graph = self._graph(kind, scale, precision)
        feeds = self._feeds(graph.inputs, x, degradation)
        out = graph(feeds)
        if precision == "fp32":
            return out
        return self._guard.check(out, lambda: self._graph(kind, scale, "fp32")(feeds))

    def degradation(self, x: torch.Tensor, scale: int) -> torch.Tensor | None:
        if not self.model.needs_degradation:
            return None
        graph = self._graph("degradation", int(scale), "fp32")
        return graph(self._feeds(graph.inputs, x))

    def describe(self) -> dict:
        return {"backend": self.name, "selected": self.selected, "device": str(self.device),
                "engine": f"OpenVINO {openvino_version()} CPU", "precision": self.precision,
                "precisions": {str(s): p for s, p in self.precisions.items()},
                "requested_precision": self.requested_precision, "precision_note": self.precision_note,
                "fp16_fallbacks": self.fp16_fallbacks, "threads": self.threads,
                "cpu": {"model": cpu_model(), "bf16": self.bf16_isa}, "cache_dir": str(self.cache_dir),
                "compiled": {k: dict(v) for k, v in self.compiled.items()}, "graph_self_ensemble": self.self_ensemble}
