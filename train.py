"""The original project's `python train.py [flags]`; same as `python -m jobs train [flags]`."""

import sys

from jobs.__main__ import main

sys.exit(main(["train", *sys.argv[1:]]))
