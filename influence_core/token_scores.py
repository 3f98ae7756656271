"""Per-token influence: where in a training example its influence on a prompt sits.

Kronfluence's per-token pairwise scores split an example's score into one term per token (they
sum to the example's score), so a report can highlight the tokens that carry the influence. They
cost a pass over the examples per prompt group, so they are computed only for the few examples a
report shows.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from datasets import load_from_disk
from kronfluence.arguments import ScoreArguments
from kronfluence.utils.dataset import DataLoaderKwargs
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from influence_core.artifacts import Scores
from influence_core.data import PadCollator, tokenize_prompts
from influence_core.factors import build_analyzer, factors_dir, load_training_examples, tracked_modules
from influence_core.modeling import weight_count
from influence_core.prompts import Prompt
from influence_core.reports import attach_token_scores

# Kronfluence scores every prompt of a call against every example of it, so prompts are grouped
# against the union of their examples while a group's work stays under this many multiply-adds:
# a small model pays Kronfluence's per-call overhead (factor loading, memory clean-up) once, a
# large one computes no pairs that nobody looks at.
GROUP_BUDGET_MACS = 1e11


class TrainingPaddedTo(PadCollator):
    """Pads training examples to one fixed length, queries (they carry labels) as PadCollator does.

    Kronfluence concatenates per-token scores of all training batches along the token axis, so
    every training batch must have the same length; padding tokens get no loss and score 0."""

    def __init__(self, pad_token_id: int, length: int) -> None:
        super().__init__(pad_token_id)
        self.length = length

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if "labels" not in examples[0]:
            examples = [self._padded(example) for example in examples]
        return super().__call__(examples)

    def _padded(self, example: dict) -> dict:
        missing = self.length - len(example["input_ids"])
        return {"input_ids": list(example["input_ids"]) + [self.pad_token_id] * missing,
                "attention_mask": list(example["attention_mask"]) + [0] * missing}


def recorded_score_arguments(scores_dir: Path) -> ScoreArguments:
    """The ScoreArguments Kronfluence recorded with the pairwise scores (score_arguments.json), so
    per-token scores use exactly what produced the totals they split."""
    recorded = json.loads((scores_dir / Scores.ARGUMENTS).read_text())
    known = {field.name for field in dataclasses.fields(ScoreArguments)}
    def parsed(value: object) -> object:  # dtypes are recorded as "torch.float32"
        is_dtype = isinstance(value, str) and value.startswith("torch.")
        return getattr(torch, value.removeprefix("torch.")) if is_dtype else value

    return ScoreArguments(**{name: parsed(value) for name, value in recorded.items() if name in known})


def per_token_scores(model_dir: Path, train_dir: Path, factors_name: str, task_name: str, prompts: list[Prompt],
                     examples: list[list[int]], score_args: ScoreArguments, batch_size: int,
                     work_dir: Path) -> list[dict[int, list[float]]]:
    """Per prompt, {training example index: one score per token of the example} for the examples
    listed for that prompt in `examples`. The factors must lie at <work_dir>/influence/factors_<name>."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    queries = tokenize_prompts(prompts, tokenizer, config.max_position_embeddings)
    training = load_training_examples(train_dir)
    shown = sorted({index for indices in examples for index in indices})
    lengths = dict(zip(shown, (len(ids) for ids in training.select(shown)["input_ids"])))
    analyzer = build_analyzer(model_dir, work_dir, factors_name, task_name)
    args = dataclasses.replace(score_args, compute_per_token_scores=True, compute_per_module_scores=False,
                               data_partitions=1, module_partitions=1)
    results: list[dict[int, list[float]]] = [{} for _ in prompts]
    tracked = tracked_modules(factors_dir(work_dir, factors_name))
    for group in group_prompts(examples, lengths, weight_count(model_dir, tracked)):
        union = sorted({index for number in group for index in examples[number]})
        longest = max(lengths[index] for index in union)
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=TrainingPaddedTo(tokenizer.pad_token_id, longest)))
        name = f"per_token_{group[0]}"
        analyzer.compute_pairwise_scores(
            scores_name=name, factors_name=factors_name, query_dataset=queries.select(group),
            train_dataset=training.select(union), per_device_query_batch_size=len(group),
            per_device_train_batch_size=batch_size, score_args=args, overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores(name)["all_modules"]  # prompts x examples x tokens
        for row, number in enumerate(group):
            for index in examples[number]:
                results[number][index] = scores[row, union.index(index), : lengths[index]].tolist()
    return results


def group_prompts(examples: list[list[int]], lengths: dict[int, int], weights: int,
                  budget: float = GROUP_BUDGET_MACS) -> list[list[int]]:
    """Consecutive prompts (with examples) grouped while prompts x union of examples x longest
    example x tracked weights, the multiply-adds of per-token scoring, stays within `budget`."""
    groups: list[list[int]] = []
    for number, indices in enumerate(examples):
        if not indices:
            continue
        candidate = [*groups[-1], number] if groups else [number]
        union = {index for member in candidate for index in examples[member]}
        cost = len(candidate) * len(union) * max(lengths[index] for index in union) * weights
        if groups and cost <= budget:
            groups[-1] = candidate
        else:
            groups.append([number])
    return groups


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """The text of each token on its own (a character split over two byte-level tokens shows as
    replacement characters)."""
    return [tokenizer.decode([token], clean_up_tokenization_spaces=False) for token in ids]


def shown_examples(report: dict) -> list[list[int]]:
    """Per prompt of report.json, the training examples it lists (top positive, then top negative)."""
    return [[item["index"] for item in entry["top_positive"] + entry["top_negative"]] for entry in report["prompts"]]


def add_token_scores(report: dict, prompts: list[Prompt], models: list[tuple[Path, Path]], train_dir: Path,
                     scores_dir: Path, factors_name: str, task_name: str, batch_size: int) -> None:
    """Give every example report.json lists its tokens and per-token scores (see per_token_scores):
    of each of `models` ((model folder, work folder holding its factors): the model's own, then an
    ensemble's members), averaged, so that they split the influence the scores average too."""
    examples = shown_examples(report)
    arguments = recorded_score_arguments(scores_dir)
    each = [per_token_scores(model_dir, train_dir, factors_name, task_name, prompts, examples, arguments, batch_size,
                             work_dir) for model_dir, work_dir in models]
    scores = [{index: torch.tensor([model[number][index] for model in each], dtype=torch.float64).mean(0).tolist()
               for index in each[0][number]} for number in range(len(prompts))]
    tokenizer = AutoTokenizer.from_pretrained(models[0][0])
    shown = sorted({index for indices in examples for index in indices})
    ids = load_from_disk(str(train_dir)).select(shown)["input_ids"]
    attach_token_scores(report, scores, {index: token_pieces(tokenizer, row) for index, row in zip(shown, ids)})
