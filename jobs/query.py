"""Ask the gradient index: score the prompts of PROMPTS against every training example without a
pass over the corpus (the index holds their whitened gradients), then score each prompt's
RERANK_TOP_K best candidates again exactly, as compute_scores would.

Output: influence/scores_<scores_name>/ in compute_scores' format (pairwise_scores.safetensors,
corpus order; prompts.json; with SCORE_FUSION, BM25's scores and the fused ranking, as compute_scores
fuses them), plus rescored.json: the examples whose scores are exact. With --prompt and --completion:
one question, its TOP_K documents by the same ranking printed, nothing published.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from influence_core.artifacts import (
    Factors,
    Index,
    Model,
    Scores,
    TrainData,
    digest_of,
    fingerprints,
    refuse_replacing,
    require,
)
from influence_core.plan import check_fits
from influence_core.prompts import Prompt, load_prompts
from influence_core.settings import QueryIndexSettings
from jobs.common import already_done, manifest, open_store

log = logging.getLogger("jobs.query")


def main(settings: QueryIndexSettings) -> None:
    started = time.time()
    one = settings.prompt is not None
    prompts = [Prompt(prompt=settings.prompt, completion=settings.completion)] if one else load_prompts(
        settings.prompts)
    store = open_store(settings.artifacts_uri)
    model, data, factors, index = Model(), TrainData(), Factors(settings.factors_name), Index(settings.index_name)
    require(store, model, data, factors, index)
    index.check_query(settings)
    output, asked = Scores(settings.scores_name), [prompt.model_dump() for prompt in prompts]
    if not one:
        refuse_replacing(store, output, "query", settings.force, f"SCORES_NAME={settings.scores_name}")
    inputs = {**fingerprints(model, data, factors, index), "PROMPTS": digest_of(asked)}
    if not one and already_done(store, [output], "query", settings, inputs):
        return

    check_fits("query", settings, len(prompts))

    from influence_core.index import answer, print_answer, write_scores
    from influence_core.scores import fuse_with_bm25

    with tempfile.TemporaryDirectory(prefix="query-") as temporary:
        work = Path(temporary)
        # Through CACHE_DIR: verified once on this machine, read as they are by later queries.
        for artifact in (model, data, factors):
            artifact.fetch(work / artifact.relative, cache=settings.cache)

        def fetch(name: str) -> Path:  # one of the index's files, as answer asks for it (one at a time)
            return index.fetch_file(name, work / "shard", cache=settings.cache)

        scores, exact = answer(work / model.relative, work / data.relative, work, index.shards(), fetch,
                               index.projection(), prompts, settings)
        local = write_scores(work / output.relative, scores, asked, exact, settings)
        if settings.score_fusion != "none":
            fuse_with_bm25(local, work / data.relative, prompts, settings)
        if one:
            print_answer(Scores.matrix(local)[0], exact, work / data.relative, settings.top_k)
            return
        record = manifest("query", settings, inputs, started, factor_strategy=factors.strategy,
                          rescored=len(exact))
        log.info("published %s", store.publish(local, output.relative, record))
