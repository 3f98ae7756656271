"""Stage 3: pairwise influence of every training example on every prompt in the prompts file.

Output: influence/scores_<scores_name>/ (Kronfluence's pairwise_scores.safetensors and arguments,
plus the prompts.json that was scored).
"""

from __future__ import annotations

import json
import logging
import time

from influence_core.prompts import Prompt, parse_prompts
from influence_core.settings import ComputeScoresSettings
from influence_core.storage import Output, read_uri
from jobs.common import already_done, fingerprint, manifest, open_artifacts, parse

log = logging.getLogger("jobs.compute_scores")


def load_prompts(settings: ComputeScoresSettings) -> list[Prompt]:
    return parse_prompts(read_uri(settings.prompts, "PROMPTS"), settings.prompts)


def main(settings: ComputeScoresSettings) -> None:
    started = time.time()
    prompts = load_prompts(settings)
    artifacts = open_artifacts(settings.artifacts_uri)
    factors = f"influence/factors_{settings.factors_name}"
    inputs = artifacts.require("model", "data/train", factors)
    inputs["prompts"] = json.dumps([prompt.model_dump() for prompt in prompts])
    output = f"influence/scores_{settings.scores_name}"
    if already_done(artifacts, [output], "compute_scores", settings, inputs):
        return

    from influence_core.factors import factors_dir
    from influence_core.runtime import (
        barrier,
        configure_threads,
        is_main_process,
        refuse_cpu_processes,
        shared_work_dir,
    )
    from influence_core.scores import compute_scores, scores_dir

    refuse_cpu_processes("compute_scores")
    configure_threads()
    with shared_work_dir("compute_scores") as work:
        out = Output(artifacts, output, scores_dir(work, settings.scores_name),
                     stamp={"stage": "compute_scores", "settings": fingerprint(settings), "inputs": inputs})
        if is_main_process():  # the other torchrun processes read what it fetched
            artifacts.fetch("model", work / "inputs" / "model")
            artifacts.fetch("data/train", work / "inputs" / "train")
            artifacts.fetch(factors, factors_dir(work, settings.factors_name))
            if restored := out.resume():
                log.info("restored %d published files of this output", len(restored))
        barrier()
        local = compute_scores(work / "inputs" / "model", work / "inputs" / "train", prompts, settings, work,
                               after_step=out.sync if is_main_process() else lambda: None)
        if not is_main_process():
            return
        if settings.shard is not None:
            log.info("published shard %d to %s; a run without SHARD_INDEX aggregates", settings.shard,
                     artifacts.url(output))
            return
        (local / "prompts.json").write_text(json.dumps([p.model_dump() for p in prompts], indent=2,
                                                       ensure_ascii=False))
        strategy = artifacts.manifest(factors)["settings"]["factor_strategy"]
        record = manifest("compute_scores", settings, inputs, started, factor_strategy=strategy)
        log.info("published %s", out.complete(record))


def run(argv: list[str]) -> None:
    main(parse(ComputeScoresSettings, argv, "compute_scores"))
