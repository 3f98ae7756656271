"""torchrun, except that it exits with the failed worker's exit code.

torchrun reports any worker failure as its own exit code 1. That hides the stages' exit code 2
(bad input), on which the Jobs' podFailurePolicy fails a Job at once instead of retrying it. So the
pods start their stage through this file: the arguments are torchrun's (this is torchrun's own
parser and launcher), and a failure exits with the code of the first worker that failed.

    python docker/torchrun_stage.py --standalone --nproc-per-node=1 -m jobs train
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def exit_code(worker_exit_code: int) -> int:
    """A worker killed by a signal reads as 128 + the signal number, as in a shell; never 0."""
    if worker_exit_code < 0:
        return 128 + abs(worker_exit_code)
    return worker_exit_code or 1


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        code = exit_code(failure.exitcode)
        reason = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        print(f"torchrun: worker rank {rank} failed ({reason}); exiting with {code}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
