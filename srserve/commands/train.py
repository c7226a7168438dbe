"""``srserve train CONFIG.yaml [CONFIG.yaml ...]``: run training recipes (resumable)."""
from __future__ import annotations

from .arguments import positive_float, positive_int

HELP = "train a model from a YAML recipe config (resumes from its last checkpoint)"


def add_arguments(p) -> None:
    p.add_argument("configs", nargs="+", metavar="CONFIG.yaml", help="configs run one after another (train/configs/)")
    p.add_argument("--iterations", type=positive_int, help="override the config's total iterations")
    p.add_argument("--minutes", type=positive_float,
                   help="stop each config after this much training time (validated, checkpointed, published); "
                        "a later call continues it")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: the config's)")
    p.add_argument("--device", help="cpu or cuda (default: the config's)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over, ignoring runs/NAME/last.pt")
    p.add_argument("--no-publish", dest="publish", action="store_false",
                   help="do not write the result into the model repository")
    p.add_argument("--publish-only", action="store_true",
                   help="publish the weights of the last checkpoint now, without training")


def run(args) -> int:
    from srserve.train.runner import train  # the training stack is imported only here

    for config in args.configs:
        train(config, args.repository, resume=args.resume, iterations=args.iterations, device=args.device,
              publish=args.publish, publish_only=args.publish_only, minutes=args.minutes, threads=args.threads)
    return 0
