"""python -m benchmarks: see benchmarks/cli.py and BENCHMARKS.md."""

import sys

from .cli import main

sys.exit(main())
