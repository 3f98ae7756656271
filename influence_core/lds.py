"""The linear datamodeling score (LDS): do the scores predict what retraining does?

Train the model again on many random subsets of the training examples (`draw_subsets`), measure
each prompt's measurement on every retrained model (`measure`), and correlate, per prompt and over
the subsets, the measurement with what the scores predict for the subset (Park et al., 2023,
TRAK; the measure Kronfluence and bergson report). A positive score means the example lowers the
measurement, so a subset's predicted measurement is minus the sum of its examples' scores; LDS is
the Spearman correlation of that prediction with the measured values, averaged over the prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from scipy.stats import spearmanr
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from influence_core.data import PadCollator, tokenize_prompts
from influence_core.prompts import Prompt
from influence_core.tasks import TASKS
from influence_core.training import TrainingPlan, train


def draw_subset(num_examples: int, fraction: float, seed: int, index: int) -> list[int]:
    """Subset `index`: round(fraction x num_examples) distinct example indices, sorted. Each subset
    has a random stream of its own (seed, index), so subset i is the same however many are drawn."""
    size = min(num_examples, max(1, round(fraction * num_examples)))
    rng = np.random.default_rng([seed, index])
    return sorted(rng.choice(num_examples, size=size, replace=False).tolist())


def mean_measurements(subsets: Sequence[dict], task: str, num_prompts: int) -> torch.Tensor:
    """subsets x prompts: each prompt's `task` measurement on each subset (a published
    measurements.json), averaged over the subset's training seeds."""
    return torch.tensor([[sum(values[task][p] for values in subset["measurements"]) / len(subset["measurements"])
                          for p in range(num_prompts)] for subset in subsets], dtype=torch.float64)


def subset_mask(subsets: Sequence[Sequence[int]], num_examples: int) -> torch.Tensor:
    """subsets x examples, 1.0 where the example is in the subset."""
    mask = torch.zeros(len(subsets), num_examples, dtype=torch.float64)
    for row, indices in enumerate(subsets):
        mask[row, list(indices)] = 1.0
    return mask


@torch.no_grad()
def measure(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
            task_names: Sequence[str] = tuple(TASKS)) -> dict[str, list[float]]:
    """Each prompt's measurement (the task's compute_measurement, what its scores predict), by task."""
    model.eval()
    queries = tokenize_prompts(prompts, tokenizer, model.config.max_position_embeddings)
    collate = PadCollator(tokenizer.pad_token_id)
    values: dict[str, list[float]] = {}
    for name in task_names:
        task = TASKS[name](tracked_modules=[])  # a measurement needs no tracked modules
        # One prompt per batch: a measurement is summed over its batch.
        values[name] = [float(task.compute_measurement(collate([row]), model)) for row in queries]
    return values


def completion_probabilities(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                             prompts: Sequence[Prompt]) -> list[float]:
    """The model's probability of each prompt's whole completion (exp of minus its summed cross-entropy)."""
    return [math.exp(-loss) for loss in measure(model, tokenizer, prompts, ["language_modeling"])["language_modeling"]]


def retrain(model: PreTrainedModel, examples: Dataset, tokenizer: PreTrainedTokenizerBase, plan: TrainingPlan,
            work_dir: Path) -> PreTrainedModel:
    """`model` (a new one of the preset, or MODEL again) trained on `examples` with `plan`."""
    train(model, examples, tokenizer, plan, work_dir)
    return model.eval()


def spearman(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """Spearman's rank correlation (ties averaged); 0.0 when either side is constant."""
    predicted, actual = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return 0.0
    return float(spearmanr(predicted, actual).statistic)


def predicted_measurements(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """subsets x prompts: minus the sum of each subset's scores (a positive score lowers the measurement)."""
    return -(mask @ scores.double().T)


def lds(scores: torch.Tensor, mask: torch.Tensor, measured: torch.Tensor) -> list[float]:
    """Per prompt, the Spearman correlation over the subsets of the predicted and measured
    measurements. scores: prompts x examples; mask: subsets x examples; measured: subsets x prompts."""
    predicted = predicted_measurements(scores, mask)
    return [spearman(predicted[:, prompt], measured[:, prompt]) for prompt in range(scores.shape[0])]


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n); 0 for one value)."""
    array = np.asarray(values, dtype=np.float64)
    stderr = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else 0.0
    return float(array.mean()), stderr


def paired_difference(first: Sequence[float], second: Sequence[float]) -> tuple[float, float]:
    """The mean per-prompt difference of two methods' correlations and its standard error."""
    return mean_and_stderr([a - b for a, b in zip(first, second)])


def summarize(scores: dict[str, torch.Tensor], tasks: dict[str, str], labels: dict[str, str],
              baselines: set[str], mask: torch.Tensor, measured: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per method: its LDS (mean over prompts), standard error and per-prompt correlations, each
    method's scores correlated with the measurement of its own task."""
    methods = {}
    for name, matrix in scores.items():
        per_prompt = lds(matrix, mask, measured[tasks[name]])
        mean, stderr = mean_and_stderr(per_prompt)
        methods[name] = {"label": labels[name], "task": tasks[name], "baseline": name in baselines, "lds": mean,
                         "stderr": stderr, "per_prompt": per_prompt}
    return methods


def random_baseline(num_examples: int, mask: torch.Tensor, measured: torch.Tensor, draws: int, seed: int,
                    label: str, task: str) -> dict:
    """What chance gives: per prompt, the mean over `draws` draws of standard normal scores of their
    correlation; one draw alone strays by about 1 / sqrt(subsets) per prompt."""
    generator = torch.Generator().manual_seed(seed)
    per_draw = [lds(torch.randn(measured.shape[1], num_examples, generator=generator), mask, measured)
                for _ in range(draws)]
    per_prompt = np.mean(per_draw, axis=0).tolist()
    mean, stderr = mean_and_stderr(per_prompt)
    return {"label": label, "task": task, "baseline": True, "lds": mean, "stderr": stderr, "per_prompt": per_prompt}


def render_markdown(result: dict) -> str:
    """lds.md: the table of methods, the paired comparisons, and per prompt correlations."""
    from influence_core.reports import NEAR_CERTAIN

    methods = result["methods"]
    lines = [
        "# Linear datamodeling score (LDS)",
        "",
        f"The model retrained on {result['subsets']} random subsets of {result['subset_size']} of its "
        f"{result['num_examples']} training examples ({result['fraction']:g} of them), {result['seeds']} training "
        f"seed(s) each ({', '.join(map(str, result['training_seeds']))}). Per prompt, the Spearman correlation over "
        "the subsets of the measured measurement with minus the sum of the subset's scores; LDS is its mean over "
        "the prompts, ± its standard error.",
        "",
        "| method | task | LDS | ± stderr |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m['label']} | {m['task']} | {m['lds']:.3f} | {m['stderr']:.3f} |" for m in methods.values()]
    if result["comparisons"]:
        lines += ["", "## Paired differences (mean over prompts of the difference in correlation)", ""]
        for name, against in result["comparisons"].items():
            for baseline, paired in against.items():
                lines.append(f"- {methods[name]['label']} - {methods[baseline]['label']}: "
                             f"{paired['difference']:+.3f} ± {paired['stderr']:.3f}")
    names = list(methods)
    lines += ["", "## Per prompt", "",
              "| prompt | completion | probability | " + " | ".join(methods[n]["label"] for n in names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for number, prompt in enumerate(result["prompts"]):
        warning = " (near-certain)" if prompt["probability"] >= NEAR_CERTAIN else ""
        cells = " | ".join(f"{methods[n]['per_prompt'][number]:+.2f}" for n in names)
        lines.append(f"| {prompt['prompt']} | {prompt['completion']} | {prompt['probability']:.3f}{warning} | "
                     f"{cells} |")
    lines += ["", f"Near-certain: the model already gives the completion a probability of at least {NEAR_CERTAIN}; "
              "the gradients that the scores are made of shrink with 1 - probability, so their predictions "
              "are weaker there.", "", "## Settings", ""]
    lines += [f"- `{key}`: {value}" for key, value in result["settings"].items()]
    return "\n".join(lines) + "\n"


def plot_lds(result: dict, path: Path) -> Path:
    """A bar per method: its LDS with its standard error."""
    from influence_core.reports import plt, save_figure

    methods = list(result["methods"].values())
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(methods), 4))
    ax.bar(range(len(methods)), [m["lds"] for m in methods], yerr=[m["stderr"] for m in methods], capsize=5,
           color=["tab:grey" if m["baseline"] else "tab:green" for m in methods])
    ax.set_xticks(range(len(methods)), [m["label"] for m in methods], rotation=20, ha="right")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("LDS (mean Spearman over prompts)")
    ax.set_title(f"LDS over {result['subsets']} subsets, ± standard error over {len(result['prompts'])} prompts")
    return save_figure(fig, path)


def plot_predicted_vs_measured(predicted: torch.Tensor, measured: torch.Tensor, result: dict, method: str,
                               path: Path) -> Path:
    """Per prompt, each subset's predicted against measured change of the measurement (both minus
    their mean over the subsets), for one method."""
    from influence_core.reports import plt, save_figure

    prompts = result["prompts"]
    columns = min(4, len(prompts))
    rows = -(-len(prompts) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for number, ax in enumerate(axes.flat):
        if number >= len(prompts):
            ax.axis("off")
            continue
        x, y = predicted[:, number], measured[:, number]
        ax.scatter((x - x.mean()).numpy(), (y - y.mean()).numpy(), s=14)
        title = f"{prompts[number]['prompt']} →{prompts[number]['completion']}"
        ax.set_title(f"{title[:38]}{'…' if len(title) > 38 else ''}\nρ = "
                     f"{result['methods'][method]['per_prompt'][number]:+.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.supxlabel(f"predicted change ({result['methods'][method]['label']}: minus the subset's summed scores)")
    fig.supylabel("measured change of the measurement")
    return save_figure(fig, path)
