"""The original project's `python compute_scores.py [flags]`; same as `python -m jobs compute_scores [flags]`."""

import sys

from jobs.__main__ import main

sys.exit(main(["compute_scores", *sys.argv[1:]]))
