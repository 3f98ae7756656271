"""Searching the gradient index without reading every row (INDEX_SEARCH; bench/search_recall.py
measures it).

An exact index (INDEX_SEARCH=exact) is scanned whole by every query: each prompt's row times every
row of every shard. At 1,000,000 examples of 32 KiB that is 32 GB read per query. An approximate
index keeps beside each shard a faiss structure of its rows (`Index.search`, built by the process
that built the shard, right after it, and trained on that shard alone, so shards stay independent):
RaBitQ's codes (a bit a number, 1/16 of a float16 row, plus two floats a row; "rabitq2", 2 bits) or
a scalar quantiser's (4 or 8 bits a number). Every structure keeps the full dimension: the rows are
whitened, so nearly isotropic, and a projection to fewer numbers (faiss' RandomRotationMatrix, or
PCA) loses the small dot products that tell the top documents from the rest, where quantising each
number spreads its error over all of them. Estimating the scores of random float16 rows of 16384
numbers (the hardest case: scores with no outliers) correlated 0.22 with the exact ones through a
rotation to 1024 numbers of 8 bits each (1 KiB a row), 0.60 through 4-bit product quantisation of
the same size, 0.79 through RaBitQ (2 KiB), 0.94 RaBitQ2 (4 KiB), 0.98 SQ4 (8 KiB).

A query searches the shards one at a time (load a structure, search it, free it): every row's
estimated score, which the published matrix keeps for the examples it does not refine; per prompt
the SEARCH_CANDIDATES highest and the SEARCH_CANDIDATES lowest (the most helpful and the most
harmful) are the candidates, whose exact index scores come from their full rows, read alone from the
memory-mapped shards. Only the matrix of scores (prompts x examples, float32) grows with the corpus.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

# INDEX_SEARCH's structures: faiss' index_factory descriptions, over the full rows (inner product).
STRUCTURES = {"rabitq": "RaBitQ", "rabitq2": "RaBitQ2", "sq4": "SQ4", "sq8": "SQ8"}


def resolve(index_search: str, examples: int, row_bytes: int) -> dict | None:
    """What an index of `examples` rows of `row_bytes` each, built with INDEX_SEARCH=`index_search`,
    keeps beside its shards (projection.json's "search"): None for an exact index, else the
    structure and its faiss description."""
    from influence_core.settings import SEARCH_AUTO, SEARCH_AUTO_BYTES

    if index_search == "exact" or (index_search == "auto" and examples * row_bytes < SEARCH_AUTO_BYTES):
        return None
    structure = SEARCH_AUTO if index_search == "auto" else index_search
    return {"structure": structure, "faiss": STRUCTURES[structure]}


def write_search(path: Path, rows: torch.Tensor, search: dict) -> None:
    """A shard's search structure: its rows (any float dtype) in the faiss structure `search`
    describes, trained on them, written under a partial name, then renamed to `path`."""
    import faiss

    from influence_core.storage import partial_name

    rows = rows.float().numpy()
    index = faiss.index_factory(rows.shape[1], search["faiss"], faiss.METRIC_INNER_PRODUCT)
    index.train(rows)
    index.add(rows)
    partial = path.with_name(partial_name(path.name))
    faiss.write_index(index, str(partial))
    partial.replace(path)


def structure_bytes(search: dict, width: int, rows: int) -> int:
    """A shard's structure's size on disk: `rows` codes of rows of `width` numbers, its trained
    parameters (RaBitQ's centroid, or each number's range for a scalar quantiser) and faiss' header."""
    parameters = (4 if search["structure"].startswith("rabitq") else 8) * width
    return rows * _code_size(search["faiss"], width) + parameters + 128


@functools.cache
def _code_size(description: str, width: int) -> int:
    """Bytes of one row's code in faiss' structure `description`: asked of an empty structure once,
    not once per shard (the plan sizes every shard of an index at each stage's start)."""
    import faiss

    return faiss.index_factory(width, description, faiss.METRIC_INNER_PRODUCT).sa_code_size()


def search_rows(path: Path) -> int | None:
    """The rows a search structure holds, None when there is none (or it cannot be read)."""
    import faiss

    try:
        return faiss.read_index(str(path)).ntotal
    except Exception:  # noqa: BLE001 - missing or unreadable: built again
        return None


def search_scores(queries: torch.Tensor, searches: Iterable[Path]) -> tuple[torch.Tensor, list[int]]:
    """Every row's estimated score for each query row (queries x training examples, float32), the
    shards' structures searched one at a time, in order; and the first example of each shard."""
    import faiss

    queries = queries.float()
    norms = queries.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    parts, starts, seen = [], [], 0
    for path in searches:
        index = faiss.read_index(str(path))
        count, scale = index.ntotal, _scale(index, norms)
        distances, ids = index.search((queries * scale).numpy(), count)  # all of them: the matrix keeps every score
        del index
        part = torch.empty(len(queries), count)
        part.scatter_(1, torch.from_numpy(ids), torch.from_numpy(distances) / scale)
        parts.append(part)
        starts.append(seen)
        seen += count
    return torch.cat(parts, dim=1), starts


def _scale(index, norms: torch.Tensor) -> torch.Tensor:
    """What each query row is multiplied by before a structure is searched (its scores divided by
    after: they are linear in the query). RaBitQ codes each row's offset from the shard's centroid,
    and its error grows with the query's distance from that centroid, not with the query's norm: a
    query of a small norm next to a centroid of a larger one (a prompt whose gradient is small) came
    out at correlation 0.05 with its exact scores on the demo corpus. Scaled to 1000 times the
    centroid's norm (at least 1) the query's distance from it is its own norm (0.93 there); no scale
    for a structure without a centroid."""
    import faiss

    center = getattr(index, "center", None)
    if center is None or center.size() == 0:
        return torch.ones_like(norms)
    return (1000 * float(torch.from_numpy(faiss.vector_to_array(center)).norm()) / norms).clamp_min(1)


def candidates(scores: torch.Tensor, count: int) -> list[int]:
    """The examples among each prompt's `count` highest and `count` lowest scores, in corpus order."""
    count = min(count, scores.shape[1])
    highest, lowest = torch.topk(scores, count, dim=1).indices, torch.topk(-scores, count, dim=1).indices
    return sorted(set(highest.flatten().tolist()) | set(lowest.flatten().tolist()))


def _runs(numbers: list[int]) -> Iterator[tuple[int, int]]:
    """Sorted numbers as runs of consecutive ones: (first, past the last)."""
    first = previous = numbers[0]
    for number in numbers[1:]:
        if number != previous + 1:
            yield first, previous + 1
            first = number
        previous = number
    yield first, previous + 1


def exact_scores(queries: torch.Tensor, examples: list[int], starts: list[int],
                 shard: Callable[[int], Path]) -> torch.Tensor:
    """The index's exact scores of `examples` (sorted) for each query row: queries x examples, from
    their full rows alone, read from the memory-mapped shards (`shard(number)`: its file), a shard
    at a time and a run of consecutive rows at a time."""
    from safetensors import safe_open

    from influence_core.artifacts import Index

    queries, scores = queries.float(), torch.empty(len(queries), len(examples))
    by_shard: dict[int, list[int]] = {}
    for example in examples:
        by_shard.setdefault(bisect.bisect_right(starts, example) - 1, []).append(example)
    at = 0
    for number, chosen in sorted(by_shard.items()):
        with safe_open(str(shard(number)), "pt") as opened:
            rows = opened.get_slice(Index.ROWS)
            for first, past in _runs([example - starts[number] for example in chosen]):
                scores[:, at:at + past - first] = queries @ rows[first:past].float().T
                at += past - first
    return scores
