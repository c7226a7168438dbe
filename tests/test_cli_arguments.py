"""Numbers on the command line: a bad one is argparse's usage error (exit 2) naming the flag and
what it expects, before any model, dataset or config is read; good ones parse to numbers."""
from __future__ import annotations

import pytest

from srserve.cli import build_parser

BAD = [
    (["upscale", "a.png", "--model", "edsr", "--tile", "-1"], "--tile: expected 'auto' or a tile size >= 0, got '-1'"),
    (["upscale", "a.png", "--model", "edsr", "--tile-batch", "0"], "--tile-batch: expected a positive integer, got '0'"),
    (["upscale", "a.png", "--model", "edsr", "--outscale", "inf"], "--outscale: expected a positive number, got 'inf'"),
    (["upscale", "a.png", "--model", "edsr", "--outscale", "nan"], "--outscale: expected a positive number, got 'nan'"),
    (["upscale", "a.png", "--model", "edsr", "--tile-margin", "x"], "--tile-margin: expected an integer >= 0, got 'x'"),
    (["eval", "--model", "edsr", "--scale", "0", "--dataset", "d"], "--scale: scales must be positive integers, got '0'"),
    (["eval", "--model", "edsr", "--scale", "4", "--dataset", "d", "--tile", "-8"], "--tile: expected a tile size >= 0"),
    (["export", "edsr", "--max-batch", "0"], "--max-batch: expected a positive integer, got '0'"),
    (["gate", "cpu-bf16", "--model", "edsr", "--scale", "2,x"], "--scale: expected integer scales like 4 or 2,3,4"),
    (["train", "c.yaml", "--minutes", "-5"], "--minutes: expected a positive number, got '-5'"),
    (["train", "c.yaml", "--threads", "0"], "--threads: expected a positive integer, got '0'"),
    (["train", "c.yaml", "--iterations", "1.5"], "--iterations: expected a positive integer, got '1.5'"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_numbers_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_good_numbers_parse():
    args = build_parser().parse_args(["upscale", "a.png", "--model", "edsr", "--tile", "auto", "--tile-margin", "0",
                                      "--outscale", "1.5", "--tile-batch", "4"])
    assert (args.tile, args.tile_margin, args.outscale, args.tile_batch) == (None, 0, 1.5, 4)
    assert build_parser().parse_args(["upscale", "a.png", "--model", "edsr", "--tile", "0"]).tile == 0
    args = build_parser().parse_args(["eval", "--model", "edsr", "--scale", "4,2,4", "--dataset", "d"])
    assert args.scale == [4, 2] and args.tile == 0
    args = build_parser().parse_args(["train", "c.yaml", "--minutes", "90", "--threads", "2"])
    assert (args.minutes, args.threads, args.iterations) == (90.0, 2, None)
