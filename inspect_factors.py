"""The original project's `python inspect_factors.py [flags]`; same as `python -m jobs inspect_factors [flags]`."""

import sys

from jobs.__main__ import main

sys.exit(main(["inspect_factors", *sys.argv[1:]]))
