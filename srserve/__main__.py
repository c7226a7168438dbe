"""Allows ``python -m srserve``."""
import sys

from srserve.cli import main

sys.exit(main())
