"""``srserve serve``: the HTTP server (``srserve.service``).

Every setting also comes from ``SR_<NAME>`` environment variables or a config file (``--config``
or ``SR_CONFIG_FILE``); flags win over both. The full list is ``srserve.service.config.Settings``
and the README's "Serving" section.
"""
from __future__ import annotations

HELP = "serve models over HTTP (POST /upscale) with cross-request tile batching"


EPILOG = """Every setting (the flags above and more: limits, API keys, CORS, timeouts) is also read from
SR_<NAME> environment variables and from the --config file; flags win, then the environment,
then the file. The full table: README, "Serving". SIGTERM drains: accepted requests finish,
new ones get 503, then the process exits 0."""


def add_arguments(p) -> None:
    import argparse

    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    # defaults are None: an unset flag leaves the environment / config file / default in charge
    p.set_defaults(repository=None)
    p.add_argument("--config", metavar="FILE", help="YAML, JSON or TOML settings file (or $SR_CONFIG_FILE)")
    p.add_argument("--host", help="listen address (default 127.0.0.1; 0.0.0.0 in containers)")
    p.add_argument("--port", type=int, help="listen port (default 8000)")
    p.add_argument("--models", metavar="A,B", help="models to serve (default: the whole repository + bicubic)")
    p.add_argument("--backend", choices=["auto", "torch", "compiled", "onnxruntime", "openvino", "tensorrt"],
                   help="default auto: the fastest engine installed (CPU: openvino, onnxruntime, torch; CUDA: "
                        "tensorrt, compiled, onnxruntime, torch; README, Engines)")
    p.add_argument("--device", help="cpu (default), cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"],
                   help="default auto: bf16 on bf16 CPUs for gated models (openvino), else fp32")
    p.add_argument("--max-batch-tiles", type=int, metavar="N", help="tiles per batch (default 1 on CPU, 8 on GPU)")
    p.add_argument("--max-delay-ms", type=float, metavar="MS", help="longest wait for a batch to fill (default 5)")
    p.add_argument("--tile-size", type=int, metavar="N", help="LR tile side (default per model)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])


def run(args) -> int:
    from srserve.service.config import load_settings
    from srserve.service.server import serve

    repository = args.repository  # cli.py's --repository; None unless given (SR_REPOSITORY still applies)
    settings = load_settings(config_file=args.config, host=args.host, port=args.port, models=args.models,
                             backend=args.backend, device=args.device, precision=args.precision,
                             max_batch_tiles=args.max_batch_tiles, max_delay_ms=args.max_delay_ms,
                             tile_size=args.tile_size, log_level=args.log_level, repository=repository)
    return serve(settings)
