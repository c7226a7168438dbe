"""The compiled engine: TorchInductor ahead-of-time packages, replayed as CUDA graphs.

Where TensorRT is not installed this is the fast CUDA engine. Eager PyTorch launches every
convolution, activation and residual add as its own kernel and reads each feature map back from
memory for the next; Inductor fuses the element-wise work into the kernels around the
convolutions and, with max-autotune, times the convolution and matrix-product implementations
on this GPU; a CUDA graph then replays a whole forward pass with one launch, so small batches
are not bound by launch overhead.

* **Packages** (``srserve.export.aoti``, made by the injected ``ArtifactBuilder`` on first use or by
  ``srserve export --format aoti``): one per scale, dynamic in batch (1..``max_batch``) and
  window (8..the largest window, multiples of the tile alignment), cached under
  ``$SR_ENGINE_CACHE/aoti`` and parity-checked when built, so a restart loads them in
  milliseconds instead of recompiling.
* **CUDA graphs per (batch bucket, window)**: buckets are the powers of two below ``max_batch``
  and ``max_batch`` itself; windows are the tile windows the pipeline feeds for the configured
  tile (``tile_window``; a server's uniform windows make every tile of an image at least that
  large one of them). A batch is padded up to its bucket (rows past the batch are left over from
  earlier calls and ignored), copied into the graph's static input, replayed, and its rows copied
  out. Every graph is captured when the backend is created, so no request pays for it; they
  share one memory pool, which is safe because replays are serialised and outputs copied out
  before the next. Graphs are CUDA-only: on a CPU (tests) the package runs directly.
* Other shapes (a small image's own window) run the package without a graph; shapes the package
  does not cover (a larger window, sides not a multiple of the alignment or under 8 pixels) run
  in PyTorch fp32, and batches above ``max_batch`` are split. ``describe()`` counts each path.

Reduced precision is inside the package (fp32 inputs and outputs); a batch with NaN/Inf is run
again in PyTorch fp32 (``PrecisionGuard``). DASR's degradation encoder runs in PyTorch (once per
image, on whole images of any size).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from srserve.models.repository import LoadedModel

from .artifacts import default_cache_dir
from .base import BackendError, PrecisionGuard, resolve_precision
from .cuda import DEFAULT_MAX_BATCH, tile_window
from .sources import ArtifactBuilder
from .torch_backend import TorchBackend

log = logging.getLogger("srserve.backends")


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch``: padding wastes at most half a batch."""
    buckets, b = [], 1
    while b < max_batch:
        buckets.append(b)
        b *= 2
    return buckets + [int(max_batch)]


def bucket_for(n: int, buckets: list[int]) -> int:
    return next(b for b in buckets if b >= n)


class GraphedRunner:
    """One CUDA graph of ``runner`` on static inputs of one (bucket, window) shape."""

    def __init__(self, runner, static_inputs: tuple[torch.Tensor, ...], pool):
        self.inputs = static_inputs
        device = static_inputs[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # lazy kernel loading and workspaces happen outside the capture
            for _ in range(2):
                runner(*static_inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):  # other threads may run
            self.output = runner(*static_inputs)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        n = tensors[0].shape[0]
        for static, t in zip(self.inputs, tensors):
            static[:n].copy_(t)
        self.graph.replay()
        return self.output[:n].clone()


class CompiledBackend:
    name = "compiled"
    selected = "requested"

    def __init__(self, model: LoadedModel, device: str | torch.device = "cuda", precision: str = "fp32", *,
                 cache_dir: str | Path | None = None, builder: ArtifactBuilder | None = None, tile: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, windows: list[int] | None = None,
                 cuda_graphs: bool | None = None, autotune: bool | None = None, force_precision: bool = False):
        """``windows``: the window sides to capture graphs for (default: the tile window of
        ``tile`` per scale); ``cuda_graphs``: default on CUDA; ``autotune``: Inductor's
        max-autotune for the packages (default on CUDA)."""
        self.device = torch.device(device)
        if self.device.type not in ("cuda", "cpu"):
            raise BackendError(f"the compiled engine runs on cuda or cpu, not {self.device}")
        if builder is None:
            raise BackendError("the compiled engine's packages are built by srserve.export; pass its ExportBuilder")
        self.model = model
        self.requested_precision = precision
        self.precision, self.precision_note = resolve_precision(precision, self.device, model.fp16_safe,
                                                                force=force_precision)
        self.torch = TorchBackend(model, self.device)  # fp32 fallback, DASR's encoder, shapes outside a package
        self._guard = PrecisionGuard(self.precision, f"{model.name}/compiled")
        self.max_batch = max(1, int(max_batch))
        self.buckets = batch_buckets(self.max_batch)
        self.windows = {s: sorted({int(w) for w in windows} if windows else {tile_window(model, s, tile)})
                        for s in model.scales}
        self.runners, self.packages = {}, {}
        cache_root = Path(cache_dir or default_cache_dir())
        for scale in model.scales:
            self.runners[scale], self.packages[scale] = builder.compiled_package(
                model, scale, self.precision, cache_root=cache_root, device=self.device,
                max_side=max(self.windows[scale]), max_batch=self.max_batch, autotune=autotune)
        self.batches = {"graph": 0, "package": 0, "eager": 0}
        self._lock = threading.Lock()
        self.graphs: dict[tuple[int, int, int], GraphedRunner] = {}
        want_graphs = self.device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        self.graph_note = "" if want_graphs else "off"
        if want_graphs:
            self._capture_graphs()

    # --- CUDA graphs ---------------------------------------------------------------------------
    def _capture_graphs(self) -> None:
        if self.device.type != "cuda":
            self.graph_note = "CUDA graphs need a GPU"
            return
        pool = torch.cuda.graph_pool_handle()
        try:
            with torch.inference_mode(), torch.cuda.device(self.device):
                for scale, runner in self.runners.items():
                    for window in self.windows[scale]:
                        if not runner.shape.accepts((1, 3, window, window)):
                            continue
                        for bucket in self.buckets:
                            self.graphs[(scale, bucket, window)] = GraphedRunner(
                                runner, self._static_inputs(bucket, window), pool)
        except Exception as exc:  # a capture the driver refuses must not take the engine down
            self.graphs.clear()
            torch.cuda.synchronize(self.device)
            self.graph_note = f"capture failed, running without graphs: {type(exc).__name__}: {str(exc)[:200]}"
            log.warning("%s/compiled: CUDA graph %s", self.model.name, self.graph_note)

    def _static_inputs(self, bucket: int, window: int) -> tuple[torch.Tensor, ...]:
        image = torch.zeros(bucket, 3, window, window, device=self.device)
        if not self.model.needs_degradation:
            return (image,)
        return image, torch.zeros(bucket, 256, device=self.device)

    # --- running ---------------------------------------------------------------------------------
    @property
    def fp16_fallbacks(self) -> int:
        return self._guard.fallbacks

    @torch.inference_mode()
    def run(self, x: torch.Tensor, scale: int, degradation: torch.Tensor | None = None) -> torch.Tensor:
        scale = int(scale)
        if scale not in self.runners:
            self.model.net(scale)  # raises the user-facing scale error
        x = x.to(self.device, torch.float32)
        if degradation is not None:
            degradation = degradation.to(self.device, torch.float32)
        if not self.runners[scale].shape.accepts((1,) + tuple(x.shape[1:])):
            self.batches["eager"] += 1
            return self.torch.run(x, scale, degradation)
        chunks = [self._run_chunk(x[i:i + self.max_batch], scale,
                                  None if degradation is None else degradation[i:i + self.max_batch])
                  for i in range(0, x.shape[0], self.max_batch)]
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return self._guard.check(out, lambda: self.torch.run(x, scale, degradation))

    def _run_chunk(self, x: torch.Tensor, scale: int, degradation: torch.Tensor | None) -> torch.Tensor:
        inputs = (x,) if degradation is None else (x, degradation)
        n, _, h, w = x.shape
        graph = self.graphs.get((scale, bucket_for(n, self.buckets), h)) if h == w else None
        with self._lock:  # graphs share static buffers and a memory pool; the package one runner
            if graph is not None:
                self.batches["graph"] += 1
                return graph(*inputs)
            self.batches["package"] += 1
            return self.runners[scale](*inputs)

    def degradation(self, x: torch.Tensor, scale: int) -> torch.Tensor | None:
        return self.torch.degradation(x, scale)

    def describe(self) -> dict:
        return {"backend": self.name, "selected": self.selected, "device": str(self.device),
                "precision": self.precision, "requested_precision": self.requested_precision,
                "precision_note": self.precision_note, "fp16_fallbacks": self.fp16_fallbacks,
                "packages": {str(s): info for s, info in self.packages.items()},
                "cuda_graphs": list(dict.fromkeys(f"{b}x{w}" for _, b, w in sorted(self.graphs))),
                "cuda_graphs_note": self.graph_note, "batches": dict(self.batches)}
