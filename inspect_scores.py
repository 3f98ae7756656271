"""The original project's `python inspect_scores.py [flags]`; same as `python -m jobs inspect_scores [flags]`."""

import sys

from jobs.__main__ import main

sys.exit(main(["inspect_scores", *sys.argv[1:]]))
