"""The original project's `python fit_factors.py [flags]`; same as `python -m jobs fit_factors [flags]`."""

import sys

from jobs.__main__ import main

sys.exit(main(["fit_factors", *sys.argv[1:]]))
