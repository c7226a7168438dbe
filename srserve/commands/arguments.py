"""argparse types shared by the subcommands: a bad number is a one-line usage error naming the
flag (argparse adds it), never a traceback from deep inside the command."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(kind: type = int, *, above: float | None = None, at_least: float | None = None,
           words: dict[str, object] | None = None, expected: str) -> Callable[[str], object]:
    """A parser for ``kind`` values ``> above`` or ``>= at_least``; ``words`` maps spelled-out
    values (``auto``) to what they stand for; ``expected`` completes "expected …, got 'x'"."""
    def parse(text: str):
        if words and text in words:
            return words[text]
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (value is None or not math.isfinite(value)
                or (above is not None and value <= above) or (at_least is not None and value < at_least)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = number(int, above=0, expected="a positive integer")
positive_float = number(float, above=0, expected="a positive number")
non_negative_int = number(int, at_least=0, expected="an integer >= 0")
tile_size = number(int, at_least=0, expected="a tile size >= 0")
tile_size_or_auto = number(int, at_least=0, words={"auto": None}, expected="'auto' or a tile size >= 0")


def parse_scales(text: str) -> list[int]:
    """``4`` or ``2,3,4``: distinct positive scales, in the order given."""
    try:
        scales = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integer scales like 4 or 2,3,4, got {text!r}") from None
    if not scales or any(s < 1 for s in scales):
        raise argparse.ArgumentTypeError(f"scales must be positive integers, got {text!r}")
    return list(dict.fromkeys(scales))
