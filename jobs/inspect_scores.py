"""Stage 4: per prompt, the most helpful and most harmful training examples, where in them the
influence sits, and the most self-influential training examples.

Output: reports/<scores_name>/ with <scores_name>_report.md, report.json, report.html (one
self-contained page) and score plots.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from influence_core import paths
from influence_core.settings import InspectScoresSettings
from influence_core.storage import Artifacts, fingerprint_of, work_dir
from jobs.common import already_done, manifest, open_artifacts

if TYPE_CHECKING:
    import torch

    from influence_core.prompts import Prompt

log = logging.getLogger("jobs.inspect_scores")


def main(settings: InspectScoresSettings) -> None:
    started = time.time()
    artifacts = open_artifacts(settings.artifacts_uri)
    scores = paths.SCORES(settings.scores_name)
    scored_with = artifacts.manifest(scores)
    factors_name = (scored_with or {"settings": {}})["settings"].get("factors_name", "")  # missing: require says so
    factors, self_scores = paths.FACTORS(factors_name), paths.SELF_SCORES(factors_name)
    needed = [scores, paths.TRAIN_DATA, paths.MODEL]  # the model: each completion's probability
    if settings.per_token_scores:  # recomputed for the shown examples: needs what the scores came from
        needed.append(factors)
    if lds_measured(artifacts, scores, scored_with):
        needed.append(paths.LDS_REPORT)
    if artifacts.manifest(self_scores) is not None:  # optional: listed when compute_self_scores has run
        needed.append(self_scores)
    # One call, so each input is checked against the others: factors fitted again under the same
    # name no longer made the scores, and per-token scores from them would not split the totals.
    inputs = artifacts.require(*needed)
    measured = paths.LDS_REPORT in inputs
    output = paths.REPORT(settings.scores_name)
    if already_done(artifacts, [output], "inspect_scores", settings, inputs):
        return

    from datasets import load_from_disk
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from influence_core.lds import completion_probabilities
    from influence_core.modeling import load_model
    from influence_core.prompts import Prompt
    from influence_core.reports import attach_lds, attach_probabilities, attach_self_influence, build_report

    with work_dir() as work:
        scores_dir = artifacts.fetch(scores, work / "scores")
        train_dir = artifacts.fetch(paths.TRAIN_DATA, work / "train")
        matrix = load_file(str(scores_dir / "pairwise_scores.safetensors"))["all_modules"]
        prompts = [Prompt(**item) for item in json.loads((scores_dir / "prompts.json").read_text())]
        texts = load_from_disk(str(train_dir))["text"]
        facts_file = train_dir / "planted_facts.json"
        facts = json.loads(facts_file.read_text()) if facts_file.exists() else None
        names = {"scores_name": settings.scores_name, "factors_name": factors_name,
                 "strategy": scored_with.get("factor_strategy")}
        report = build_report(matrix, prompts, texts, facts, settings.num_influential, names)
        model_dir = artifacts.fetch(paths.MODEL, work / "model")
        attach_probabilities(report, completion_probabilities(load_model(model_dir),
                                                              AutoTokenizer.from_pretrained(model_dir), prompts))
        if measured:
            attach_lds(report, json.loads(artifacts.read_bytes(f"{paths.LDS_REPORT}/lds.json")), settings.scores_name)

        if settings.per_token_scores:
            from influence_core.factors import factors_dir
            from influence_core.runtime import configure_threads
            from influence_core.token_scores import add_token_scores

            configure_threads()
            artifacts.fetch(factors, factors_dir(work, factors_name))
            log.info("per-token scores of the %d prompts' top examples", len(prompts))
            add_token_scores(report, prompts, model_dir, train_dir, scores_dir, factors_name,
                             scored_with["settings"].get("task", "language_modeling"),
                             scored_with["settings"].get("train_batch_size", 8), work)
        if self_scores in inputs:
            local = artifacts.fetch(self_scores, work / "self_scores")
            values = load_file(str(local / "self_scores.safetensors"))["all_modules"]  # one per training example
            attach_self_influence(report, values, texts, settings.num_self_influential, factors_name)

        write_report(report, matrix, prompts, settings, work / "report")
        if "fact_recall_at_10" in report:
            log.info("planted-fact recall@10: %.3f", report["fact_recall_at_10"])
        log.info("published %s", artifacts.publish(work / "report", output, manifest("inspect_scores", settings,
                                                                                     inputs, started)))


def lds_measured(artifacts: Artifacts, scores: str, scored_with: dict | None) -> bool:
    """Whether the LDS stage measured these very scores (`scored_with`: their manifest), not an
    earlier version of them."""
    recorded = ((artifacts.manifest(paths.LDS_REPORT) or {}).get("inputs") or {}).get(scores)
    if recorded is None or scored_with is None:
        return False
    if recorded != fingerprint_of(scored_with):
        log.warning("%s measured an earlier version of these scores; rerun python -m jobs lds to report their LDS",
                    artifacts.url(paths.LDS_REPORT))
        return False
    return True


def write_report(report: dict, matrix: torch.Tensor, prompts: list[Prompt], settings: InspectScoresSettings,
                 out: Path) -> None:
    """report.json, the markdown and HTML reports and the score plots, into `out`."""
    from influence_core.report_html import render_html
    from influence_core.reports import (
        distribution_plot_name,
        plot_prompt_distribution,
        plot_score_distributions,
        render_markdown,
    )

    out.mkdir()
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / f"{settings.scores_name}_report.md").write_text(render_markdown(report, settings.excerpt_chars))
    plot_score_distributions(matrix, prompts, out / "score_distributions.png")
    images = {}
    for number, (row, entry) in enumerate(zip(matrix, report["prompts"]), start=1):
        path = plot_prompt_distribution(row, entry, number, out / distribution_plot_name(number))
        images[path.name] = path.read_bytes()
    (out / "report.html").write_text(render_html(report, images, settings.excerpt_chars), encoding="utf-8")

