"""What one torchrun process of a pod runs, for tests that start several with
torch.multiprocessing.spawn; its imports are few, since every process imports this module."""

from __future__ import annotations

import os
from pathlib import Path

from influence_core.corpus_order import restore_on_main_process
from influence_core.runtime import barrier


def restore_as_rank(rank: int, world: int, port: int, path: Path, order: list[int]) -> None:
    """One torchrun process of a pod: the environment torchrun sets, then what compute_scores does."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    barrier()  # all at once, as the ranks arrive after Kronfluence's own barrier
    restore_on_main_process(path, order)
