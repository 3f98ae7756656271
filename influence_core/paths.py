"""Where each artifact lives below ARTIFACTS_URI: the layout of the README and
../shared/ARCHITECTURE.md, written once. A path that depends on a setting is a Template naming that
settings field: `FACTORS("demo")` is "influence/factors_demo", and the stage registry formats a
stage's outputs with its settings and reads the templates to tell which stage makes a missing input."""

from __future__ import annotations

import re


class Template(str):
    """An artifact path with one {field}; called with the field's value, the path."""

    def __call__(self, value: str | int) -> str:
        return self.format(**{re.search(r"\{(\w+)", self).group(1): value})


MODEL = "model"  # save_pretrained: config, weights, tokenizer, training_metrics.json
TRAIN_DATA = "data/train"  # datasets.save_to_disk; example i = document i of the corpus
TRAIN_CHECKPOINTS = "checkpoints/train"  # the last checkpoint of an unfinished training run
FACTORS = Template("influence/factors_{factors_name}")  # Kronfluence's factor files, tracked_modules.json
SCORES = Template("influence/scores_{scores_name}")  # pairwise_scores.safetensors (corpus order), prompts.json
SELF_SCORES = Template("influence/self_scores_{factors_name}")  # self_scores.safetensors (corpus order)
FACTORS_REPORT = Template("reports/factors_{factors_name}")  # inspect_factors' plots and summary.json
REPORT = Template("reports/{scores_name}")  # <scores_name>_report.md, report.json, report.html, plots
EVALUATION_REPORT = "reports/evaluation"  # evaluation.json, evaluation.md
LDS_REPORT = "reports/lds"  # lds.json, lds.md, plots
LDS_SUBSET = Template("lds/subsets/{subset_index:05d}")  # measurements.json of the models retrained on a subset
