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

from influence_core.artifacts import (
    Factors,
    LdsReport,
    Model,
    Report,
    Scores,
    SelfScores,
    TrainData,
    find,
    fingerprints,
    in_member,
    require,
)
from influence_core.settings import InspectScoresSettings
from influence_core.storage import work_dir
from jobs.common import already_done, manifest, open_store

if TYPE_CHECKING:
    import torch

    from influence_core.prompts import Prompt

log = logging.getLogger("jobs.inspect_scores")


def main(settings: InspectScoresSettings) -> None:
    started = time.time()
    store = open_store(settings.artifacts_uri)
    scores = Scores(settings.scores_name)
    require(store, scores)
    members = scores.members
    require(store, *members)
    model, data = Model(), TrainData()
    # The model: each completion's probability; the models and factors that made the influence (the
    # ensemble's members' too): the per-token scores of the examples shown, which must split it.
    explaining = [(model, scores.factors), *((in_member(model, member.member), member.factors)
                                             for member in members)]
    required = (scores, data, model, *([part for pair in explaining for part in pair]
                                       if settings.per_token_scores else []))
    require(store, *required)
    lds = find(store, LdsReport(), required)
    if lds is not None and not lds.measured(scores):
        lds = None
    self_scores = find(store, SelfScores(scores.factors_name), required)  # listed when compute_self_scores ran
    inputs = fingerprints(*required, *[optional for optional in (lds, self_scores) if optional is not None])
    output = Report(settings.scores_name)
    if already_done(store, [output], "inspect_scores", settings, inputs):
        return

    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from influence_core.fusion import corpus_bm25, describe, prompt_bm25, score_label
    from influence_core.lds import completion_probabilities
    from influence_core.modeling import load_model
    from influence_core.prompts import Prompt
    from influence_core.reports import (
        attach_evidence,
        attach_lds,
        attach_probabilities,
        attach_rescored,
        attach_self_influence,
        build_report,
        suggest_ensemble,
    )

    with work_dir() as work:
        scores_dir = scores.fetch(work / "scores")
        train_dir = data.fetch(work / "train")
        matrix, influence = Scores.matrix(scores_dir), Scores.influence(scores_dir)
        prompts = [Prompt(**item) for item in json.loads((scores_dir / Scores.PROMPTS).read_text())]
        texts = load_from_disk(str(train_dir))["text"]
        names = {"scores_name": settings.scores_name, "factors_name": scores.factors_name,
                 "strategy": scores.strategy}
        report = build_report(matrix, prompts, texts, data.facts(), settings.num_influential, names,
                              influence if scores.fusion != "none" else None)
        report["score_label"] = score_label(scores.settings, scores.models)
        lexical = Scores.lexical(scores_dir)
        attach_evidence(report, describe(scores.settings, scores.models), influence,
                        lexical if lexical is not None else prompt_bm25(prompts, corpus_bm25(train_dir)))
        if scores.models == 1 and model.family != "imported":
            suggest_ensemble(report)
        if (rescored := scores.rescored()) is not None:
            attach_rescored(report, rescored["examples"], rescored["rerank_top_k"])
        model_dir = model.fetch(work / "model")
        attach_probabilities(report, completion_probabilities(load_model(model_dir),
                                                              AutoTokenizer.from_pretrained(model_dir), prompts))
        if lds is not None:
            attach_lds(report, lds.result(), settings.scores_name)

        if settings.per_token_scores:
            from influence_core.runtime import configure_threads
            from influence_core.token_scores import add_token_scores

            configure_threads()
            log.info("per-token scores of the %d prompts' top examples (%d model%s)", len(prompts), len(explaining),
                     "s" if len(explaining) > 1 else "")
            # Each model, and its factors where Kronfluence looks for them: <its work dir>/influence/factors_<name>.
            places = [(model_dir, work)]
            for member_model, _ in explaining[1:]:
                place = work / f"member_{member_model.member}"
                places.append((member_model.fetch(place / "model"), place))
            for (_, factors), (_, place) in zip(explaining, places):
                factors.fetch(place / Factors(scores.factors_name).relative)
            add_token_scores(report, prompts, places, train_dir, scores_dir, scores.factors_name, scores.task,
                             scores.settings.train_batch_size)
        if self_scores is not None:
            values = SelfScores.values(self_scores.fetch(work / "self_scores"))  # one per training example
            attach_self_influence(report, values, texts, settings.num_self_influential, scores.factors_name)

        write_report(report, matrix, prompts, settings, work / "report")
        if "fact_recall_at_10" in report:
            log.info("planted-fact recall@10: %.3f", report["fact_recall_at_10"])
        log.info("published %s", store.publish(work / "report", output.relative,
                                               manifest("inspect_scores", settings, inputs, started)))


def write_report(report: dict, matrix: torch.Tensor, prompts: list[Prompt], settings: InspectScoresSettings,
                 out: Path) -> None:
    """report.json, the markdown and HTML reports and the score plots, into `out`."""
    from influence_core.report_html import render_html
    from influence_core.reports import (
        plot_prompt_distribution,
        plot_score_distributions,
        render_markdown,
    )

    out.mkdir()
    (out / Report.JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / Report.markdown(settings.scores_name)).write_text(render_markdown(report, settings.excerpt_chars))
    plot_score_distributions(matrix, prompts, out / Report.DISTRIBUTIONS, report["score_label"])
    images = {}
    for number, (row, entry) in enumerate(zip(matrix, report["prompts"]), start=1):
        path = plot_prompt_distribution(row, entry, number, out / Report.distribution_plot(number),
                                        report["score_label"])
        images[path.name] = path.read_bytes()
    (out / Report.HTML).write_text(render_html(report, images, settings.excerpt_chars), encoding="utf-8")
