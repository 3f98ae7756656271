"""Stage 4: per prompt, the most helpful and most harmful training examples.

Output: reports/<scores_name>/ with <scores_name>_report.md, report.json and score plots.
"""

from __future__ import annotations

import json
import logging
import time

from influence_core.settings import InspectScoresSettings
from influence_core.storage import work_dir
from jobs.common import already_done, manifest, open_artifacts, parse

log = logging.getLogger("jobs.inspect_scores")


def main(settings: InspectScoresSettings) -> None:
    started = time.time()
    artifacts = open_artifacts(settings.artifacts_uri)
    scores = f"influence/scores_{settings.scores_name}"
    inputs = artifacts.require(scores, "data/train")
    output = f"reports/{settings.scores_name}"
    if already_done(artifacts, [output], "inspect_scores", settings, inputs):
        return

    from datasets import load_from_disk
    from safetensors.torch import load_file

    from influence_core.prompts import Prompt
    from influence_core.reports import build_report, plot_score_distributions, render_markdown

    with work_dir() as work:
        scores_dir = artifacts.fetch(scores, work / "scores")
        train_dir = artifacts.fetch("data/train", work / "train")
        matrix = load_file(str(scores_dir / "pairwise_scores.safetensors"))["all_modules"]
        prompts = [Prompt(**item) for item in json.loads((scores_dir / "prompts.json").read_text())]
        texts = load_from_disk(str(train_dir))["text"]
        facts_file = train_dir / "planted_facts.json"
        facts = json.loads(facts_file.read_text()) if facts_file.exists() else None
        scored_with = artifacts.manifest(scores)
        names = {"scores_name": settings.scores_name,
                 "factors_name": scored_with["settings"]["factors_name"],
                 "strategy": scored_with.get("factor_strategy")}
        report = build_report(matrix, prompts, texts, facts, settings.num_influential, names)

        out = work / "report"
        out.mkdir()
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        (out / f"{settings.scores_name}_report.md").write_text(render_markdown(report, settings.excerpt_chars))
        plot_score_distributions(matrix, prompts, out / "score_distributions.png")
        if "fact_recall_at_10" in report:
            log.info("planted-fact recall@10: %.3f", report["fact_recall_at_10"])
        log.info("published %s", artifacts.publish(out, output, manifest("inspect_scores", settings, inputs,
                                                                          started)))


def run(argv: list[str]) -> None:
    main(parse(InspectScoresSettings, argv, "inspect_scores"))
