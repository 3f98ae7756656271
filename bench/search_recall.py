"""The approximate search of the gradient index (INDEX_SEARCH, influence_core/search.py) against the
exact scan: the measurement INDEX_SEARCH=auto's structure and threshold, and SEARCH_CANDIDATES, are
chosen by (issue "Search that does not read every row for every question"). Prints JSON; the
figures are in docs/guides/ask-new-questions.md ("Search without reading every row").

Per structure (--structures, INDEX_SEARCH's names): the seconds to build the shards' structures,
to search them all for one prompt and for all, to read and score one prompt's 2 x 1000 candidates
from their full rows; the candidate recall, the share of the exact scan's top 10 (bottom 10) per
prompt among the COUNT highest (lowest) estimated scores; and `needed`, per prompt and tail the
fewest candidates that hold all of its top 10 (worst and median). The exact scan's seconds are for
the memory-mapped shards, as the query reads them.

synthetic (the default): ROWS random float16 rows of 16384 numbers (Gaussian, each scaled by a
log-normal norm as gradients' norms spread) in shards of 1024, and PROMPTS random query rows, each
with 20 planted near-duplicates among the rows (cosines 0.02 to 0.3, half of them negative, so
both tails hold planted rows).

real (--artifacts DIR): an index build_index made there (INDEX_NAME; built exact, the structures
are made here from its shards) and the prompts of --prompts_file, their rows computed as the query
computes them.

million (--million): 977 shards' structures of 1024 rows (1,000,000 rows; one shard's structure
of random rows, copied: the search's cost does not depend on what the rows hold), one prompt
searched over all of them: seconds and the process's peak RSS, the structures in the page cache.

    OMP_NUM_THREADS=1 python bench/search_recall.py [--rows 20000] [--prompts 4] [--structures rabitq,sq4]
    OMP_NUM_THREADS=1 python bench/search_recall.py --artifacts ./artifacts [--index_name index]
        [--prompts_file prompts.json]
    OMP_NUM_THREADS=1 python bench/search_recall.py --million [--million_structure rabitq2]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from influence_core.artifacts import Index  # noqa: E402
from influence_core.search import STRUCTURES, candidates, exact_scores, search_scores, write_search  # noqa: E402

WIDTH, SHARD, TOP = 16384, 1024, 10
COUNTS = (10, 20, 50, 100, 200, 500, 1000)


def synthetic(rows: int, prompts: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` x WIDTH float16 rows with planted near-duplicates of `prompts` query rows (float32)."""
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(prompts, WIDTH, generator=generator)
    index = torch.empty(rows, WIDTH, dtype=torch.float16)
    for start in range(0, rows, SHARD):
        block = torch.randn(min(SHARD, rows - start), WIDTH, generator=generator)
        norms = torch.exp(torch.randn(len(block), 1, generator=generator) * 0.5)
        index[start:start + len(block)] = (block * norms).half()
    planted = torch.randperm(rows, generator=generator)[:20 * prompts].view(prompts, 20)
    for prompt in range(prompts):
        for k, row in enumerate(planted[prompt].tolist()):
            cosine = (0.02 + 0.28 * (k // 2) / 9) * (1 if k % 2 == 0 else -1)
            noise = index[row].float()
            direction = queries[prompt] / queries[prompt].norm() * noise.norm()
            index[row] = (cosine * direction + (1 - cosine ** 2) ** 0.5 * noise).half()
    return index, queries


def write_shards(index: torch.Tensor, folder: Path) -> list[Path]:
    from safetensors.torch import save_file

    paths = []
    for number, start in enumerate(range(0, len(index), SHARD)):
        paths.append(folder / Index.shard(number))
        save_file({Index.ROWS: index[start:start + SHARD].contiguous()}, str(paths[-1]))
    return paths


def exact_scan(queries: torch.Tensor, shards: list[Path]) -> tuple[torch.Tensor, dict]:
    """The exact scan as the query runs it (influence_core.index.score_shards) of the queries, and
    its seconds for them and for the first alone."""
    from influence_core.index import score_shards

    started = time.perf_counter()
    score_shards(queries[:1], shards)
    one = time.perf_counter() - started
    started = time.perf_counter()
    scores = score_shards(queries, shards)
    return scores, {"exact_s_one_prompt": round(one, 3),
                    f"exact_s_{len(queries)}_prompts": round(time.perf_counter() - started, 3)}


def recall(exact: torch.Tensor, approximate: torch.Tensor, count: int) -> dict:
    """The share of each prompt's exact top and bottom TOP among its `count` candidates per tail."""
    found = {"top": 0, "bottom": 0}
    for prompt in range(len(exact)):
        for tail, sign in (("top", 1), ("bottom", -1)):
            truth = set(torch.topk(sign * exact[prompt], TOP).indices.tolist())
            chosen = set(torch.topk(sign * approximate[prompt], min(count, exact.shape[1])).indices.tolist())
            found[tail] += len(truth & chosen)
    return {tail: round(hits / (TOP * len(exact)), 4) for tail, hits in found.items()}


def fewest(exact: torch.Tensor, approximate: torch.Tensor) -> int:
    """The fewest highest estimates that hold all of the exact TOP highest."""
    ranks = torch.argsort(torch.argsort(approximate, descending=True))
    return int(ranks[torch.topk(exact, TOP).indices].max()) + 1


def measure(queries: torch.Tensor, shards: list[Path], exact: torch.Tensor, structures: list[str],
            folder: Path) -> dict:
    """Per structure: build and search seconds, and the recall at each candidate count."""
    from safetensors.torch import load_file

    figures = {}
    for structure in structures:
        search = {"structure": structure, "faiss": STRUCTURES[structure]}
        searches = [folder / f"search_{structure}_{number:05d}.faiss" for number in range(len(shards))]
        started = time.perf_counter()
        for shard, path in zip(shards, searches):
            write_search(path, load_file(str(shard))[Index.ROWS], search)
        built = time.perf_counter() - started
        started = time.perf_counter()
        search_scores(queries[:1], searches)
        one = time.perf_counter() - started
        started = time.perf_counter()
        approximate, starts = search_scores(queries, searches)
        searched = time.perf_counter() - started
        chosen = candidates(approximate[:1], 1000)
        started = time.perf_counter()
        exact_scores(queries[:1], chosen, starts, lambda number: shards[number])
        refined = time.perf_counter() - started
        needed = sorted(fewest(sign * exact[prompt], sign * approximate[prompt])
                        for prompt in range(len(exact)) for sign in (1, -1))
        figures[structure] = {"build_s": round(built, 2), "search_s_one_prompt": round(one, 3),
                              "needed_worst": needed[-1], "needed_median": needed[len(needed) // 2],
                        f"search_s_{len(queries)}_prompts": round(searched, 3),
                        "refine_s_one_prompt_2000_candidates": round(refined, 3),
                        "bytes_per_row": round(sum(path.stat().st_size for path in searches) / exact.shape[1]),
                        "recall": {count: recall(exact, approximate, count) for count in COUNTS}}
        print(structure, json.dumps(figures[structure]), file=sys.stderr)
    return figures


def million(structure: str, folder: Path, shards: int = -(-1_000_000 // SHARD)) -> dict:
    """One prompt searched over 1,000,000 rows' structures (977 shards of 1024 random rows; one
    shard's structure built, then copied: the search's cost does not depend on what the rows
    hold): seconds and peak RSS, the structures in the page cache as they were just written."""
    import shutil

    search = {"structure": structure, "faiss": STRUCTURES[structure]}
    generator = torch.Generator().manual_seed(1)
    first = folder / "million_00000.faiss"
    write_search(first, torch.randn(SHARD, WIDTH, generator=generator).half(), search)
    paths = [first]
    for number in range(1, shards):
        paths.append(folder / f"million_{number:05d}.faiss")
        shutil.copyfile(first, paths[-1])
    query = torch.randn(1, WIDTH, generator=generator)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    scores, _ = search_scores(query, paths)
    chosen = candidates(scores, 1000)
    seconds = time.perf_counter() - started
    return {"rows": scores.shape[1], "structure": structure, "search_s": round(seconds, 2),
            "candidates": len(chosen), "structures_bytes": sum(path.stat().st_size for path in paths),
            "peak_rss_mib_before": before // 1024,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def real(artifacts: Path, index_name: str, prompts_file: Path, structures: list[str], folder: Path) -> dict:
    """The recall figures on an index build_index made, for the prompts of `prompts_file`."""
    from influence_core.index import prompt_rows
    from influence_core.prompts import load_prompts
    from influence_core.settings import QueryIndexSettings

    relative = Index(index_name).relative
    shards = sorted((artifacts / relative).glob("shard_*.safetensors"))
    recorded = json.loads((artifacts / relative / Index.PROJECTION).read_text())
    built = json.loads((artifacts / relative / "_SUCCESS").read_text())["settings"]
    settings = QueryIndexSettings(artifacts_uri=str(artifacts), index_name=index_name,
                                  **{key: built[key] for key in ("factors_name", "damping_factor", "amp_dtype")})
    _, queries = prompt_rows(artifacts / "model", artifacts, recorded, load_prompts(str(prompts_file)), settings)
    exact, seconds = exact_scan(queries, shards)
    return {"rows": exact.shape[1], "width": queries.shape[1], "prompts": len(queries), **seconds,
            "structures": measure(queries, shards, exact, structures, folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--structures", default=",".join(STRUCTURES))
    parser.add_argument("--million", action="store_true")
    parser.add_argument("--million_structure", default="rabitq2")
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--index_name", default="index")
    parser.add_argument("--prompts_file", type=Path, default=ROOT / "prompts.json")
    args = parser.parse_args()
    structures = args.structures.split(",")
    results = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="search-recall-") as temporary:
        folder = Path(temporary)
        if args.million:
            results["million"] = million(args.million_structure, folder)
        elif args.artifacts:
            results["real"] = real(args.artifacts, args.index_name, args.prompts_file, structures, folder)
        else:
            index, queries = synthetic(args.rows, args.prompts)
            shards = write_shards(index, folder)
            del index
            exact, seconds = exact_scan(queries, shards)
            results["synthetic"] = {"rows": args.rows, "prompts": args.prompts, **seconds,
                                    "structures": measure(queries, shards, exact, structures, folder)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
