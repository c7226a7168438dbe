"""``srserve``: one command line for import, list, upscale, eval, export, gate, serve, train, interpolate.

Each subcommand lives in ``srserve/commands/<name>.py`` with ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``; heavy imports happen inside ``run`` so ``srserve --help`` is instant and
the server never imports the training stack.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from srserve import __version__

# subcommand -> module under srserve.commands
COMMANDS = {
    "import": "import_",
    "list": "list_",
    "upscale": "upscale",
    "eval": "eval_",
    "export": "export",
    "gate": "gate",
    "serve": "serve",
    "train": "train",
    "interpolate": "interpolate",
}


def default_repository() -> str:
    return os.environ.get("SR_REPOSITORY", "model_repository")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srserve", description="Super-resolution models: import, run, evaluate, serve.")
    parser.add_argument("--version", action="version", version=f"srserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        if importlib.util.find_spec(f"srserve.commands.{module_name}") is None:
            continue  # not built yet in this checkout
        module = importlib.import_module(f"srserve.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--repository", metavar="DIR", default=default_repository(),
                       help="model repository (default: $SR_REPOSITORY or ./model_repository)")
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from srserve.models.errors import SRError

    try:
        return int(args.handler(args) or 0)
    except SRError as exc:
        print(f"srserve {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
