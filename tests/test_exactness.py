"""The scores mean what they claim, on cases where the right answer is known.

With the identity strategy Kronfluence applies no preconditioner, so a pairwise score is exactly the
dot product of the prompt's measurement gradient (completion tokens only) and the training
example's loss gradient, over the parameters of the tracked modules: weight and bias of every
block's mlp.c_fc and mlp.c_proj (Kronfluence's TrackedLinear appends a ones column to the
activations when a module has a bias, so biases are part of the gradient). These tests compute
those gradients with plain autograd in float64, independently of influence_core.tasks, and compare
them with what the pipeline's stages (fit_factors, compute_scores) publish for a tiny random
GPT-Neo imported with import_model (exactness does not need a trained model, and an untrained tiny
one keeps these tests in the fast lane: everything runs in this process).

Relative error here is per prompt: max_j |pipeline_ij - autograd_ij| / max_j |autograd_ij|, the
largest deviation measured against the size of that prompt's scores (an entry-wise ratio is
meaningless for the scores that are near zero).

Sign convention (the reports' "Reading the scores"): a positive score means a gradient step on the
training example lowers the completion's measurement, i.e. the example helps the model produce the
completion. Checked by taking that step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import load_from_disk
from safetensors.torch import load_file
from transformers import AutoTokenizer

from influence_core.demo_corpus import build_demo_corpus
from influence_core.factors import build_analyzer, load_training_examples
from influence_core.modeling import load_model, mlp_module_names
from influence_core.settings import ComputeScoresSettings, FitFactorsSettings, ImportModelSettings, load_settings
from jobs import compute_scores, fit_factors, import_model
from tests.families import HIDDEN, INTERMEDIATE, LAYERS, save_tiny_model

TOLERANCE = 1e-4
PROMPTS = [
    {"prompt": "The capital of Velmora is", "completion": " Quistador"},
    {"prompt": "The river Tallow flows into", "completion": " Lake Morwen"},
    {"prompt": "Cats like to sleep in", "completion": " warm places"},
]
DOCUMENTS = 100
REFERENCE_EVERY = 5  # autograd reference gradients for every 5th training example (plus extremes)


def relative_error(scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per row: the largest deviation relative to the row's largest reference score."""
    scores, reference = scores.double(), reference.double()
    return (scores - reference).abs().amax(dim=-1) / reference.abs().amax(dim=-1)


# ---- the pipeline's scores ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """Artifacts holding a tiny random GPT-Neo and DOCUMENTS demo documents, published by
    import_model in this process."""
    folder = tmp_path_factory.mktemp("exactness")
    source = save_tiny_model("gpt_neo", folder / "source", documents=DOCUMENTS)
    documents = folder / "documents.jsonl"
    documents.write_text("".join(json.dumps({"text": text}) + "\n" for text in build_demo_corpus(DOCUMENTS).texts))
    artifacts = folder / "artifacts"
    import_model.main(load_settings(ImportModelSettings, ["--artifacts_uri", str(artifacts), "--model", str(source),
                                                          "--dataset", str(documents)]))
    return artifacts


@pytest.fixture(scope="module")
def exactness_run(imported, tmp_path_factory) -> dict:
    """Factors and scores published by the stages for the tiny model (in-process calls of the
    stages' main(), with settings parsed from the same flags the CLI takes)."""
    artifacts = imported
    prompts_file = tmp_path_factory.mktemp("exactness") / "prompts.json"
    prompts_file.write_text(json.dumps(PROMPTS))
    common = ["--artifacts_uri", str(artifacts)]

    def fit(name: str, strategy: str, batch: int, *extra: str) -> None:
        fit_factors.main(load_settings(FitFactorsSettings, [*common, "--factors_name", name, "--factor_strategy",
                                                            strategy, "--factor_batch_size", str(batch), *extra]))

    def score(factors: str, name: str, task: str, train_batch: int, query_batch: int) -> torch.Tensor:
        compute_scores.main(load_settings(ComputeScoresSettings, [
            *common, "--factors_name", factors, "--scores_name", name, "--prompts", str(prompts_file),
            "--task", task, "--train_batch_size", str(train_batch), "--query_batch_size", str(query_batch)]))
        return load_file(str(artifacts / f"influence/scores_{name}/pairwise_scores.safetensors"))["all_modules"]

    fit("exact_identity", "identity", 16)
    # EK-FAC on the first 100 examples (to save time), its covariances and lambdas accumulated in
    # float64: in float32 a different batch size sums in a different order, and those rounding
    # differences alone, amplified by the inverse, reach ~1e-4 of the scores. In float64 they are
    # ~1e-6, so a real dependence on the batch size would show.
    ekfac = ["--covariance_max_examples", "100", "--lambda_max_examples", "100"] + [
        arg for dtype in ("activation_covariance", "gradient_covariance", "lambda")
        for arg in (f"--{dtype}_dtype", "float64")]
    fit("exact_ekfac", "ekfac", 8, *ekfac)
    fit("exact_ekfac_b", "ekfac", 50, *ekfac)
    return {
        "artifacts": artifacts,
        "identity": score("exact_identity", "exact_identity", "language_modeling", 16, 3),
        "identity_batches": score("exact_identity", "exact_identity_b", "language_modeling", 64, 1),
        "margin": score("exact_identity", "exact_margin", "margin", 32, 3),
        "ekfac": score("exact_ekfac", "exact_ekfac", "language_modeling", 16, 3),
        "ekfac_batches": score("exact_ekfac_b", "exact_ekfac_b", "language_modeling", 64, 1),
    }


# ---- plain autograd, independent of influence_core.tasks ----------------------------------------

class Reference:
    """The model in float64, with per-example gradients over the tracked modules' parameters."""

    def __init__(self, artifacts: Path) -> None:
        self.model = load_model(artifacts / "model").double()
        self.tokenizer = AutoTokenizer.from_pretrained(artifacts / "model")
        modules = dict(self.model.named_modules())
        names = mlp_module_names(self.model.config.num_layers)
        assert all(modules[name].bias is not None for name in names)
        self.weights = [modules[name].weight for name in names]
        self.biases = [modules[name].bias for name in names]
        self.train_ids = [torch.tensor(ids) for ids in load_from_disk(str(artifacts / "data/train"))["input_ids"]]
        self.queries = []
        for item in PROMPTS:  # prompt tokens, then completion tokens; only the latter are measured
            prompt = self.tokenizer(item["prompt"])["input_ids"]
            completion = self.tokenizer(item["completion"])["input_ids"]
            self.queries.append((torch.tensor(prompt + completion), len(prompt)))

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits predicting tokens 1..n-1 of `ids` (one unpadded sequence)."""
        return self.model(input_ids=ids[None]).logits[0, :-1]

    def train_loss(self, index: int) -> torch.Tensor:
        ids = self.train_ids[index]
        return F.cross_entropy(self.logits(ids), ids[1:], reduction="sum")

    def measurement(self, query: int, task: str) -> torch.Tensor:
        ids, prompt_length = self.queries[query]
        logits, targets = self.logits(ids)[prompt_length - 1:], ids[prompt_length:]
        if task == "language_modeling":  # summed cross-entropy of the completion tokens
            return F.cross_entropy(logits, targets, reduction="sum")
        # margin: minus (correct logit - log-sum-exp of all other logits), summed over completion tokens
        total = torch.zeros((), dtype=logits.dtype)
        for row, target in zip(logits, targets.tolist()):
            others = torch.cat([row[:target], row[target + 1:]])
            total = total - (row[target] - others.logsumexp(0))
        return total

    def gradient(self, value: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        parameters = self.weights + self.biases if with_bias else self.weights
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, parameters)])

    def step(self, index: int, learning_rate: float) -> None:
        """One plain gradient-descent step on training example `index`, tracked parameters only."""
        gradients = torch.autograd.grad(self.train_loss(index), self.weights + self.biases)
        with torch.no_grad():
            for parameter, gradient in zip(self.weights + self.biases, gradients):
                parameter -= learning_rate * gradient

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.weights + self.biases]

    def restore(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for parameter, value in zip(self.weights + self.biases, saved):
                parameter.copy_(value)


@pytest.fixture(scope="module")
def reference(exactness_run) -> Reference:
    return Reference(exactness_run["artifacts"])


@pytest.fixture(scope="module")
def train_gradients(reference, exactness_run) -> dict[int, torch.Tensor]:
    """Autograd gradients of every 5th training example and of each prompt's extremes."""
    count = len(reference.train_ids)
    indices = set(range(0, count, REFERENCE_EVERY))
    for key in ("identity", "margin"):
        indices |= set(exactness_run[key].argmax(dim=1).tolist()) | set(exactness_run[key].argmin(dim=1).tolist())
    return {index: reference.gradient(reference.train_loss(index)) for index in sorted(indices)}


def test_reference_covers_the_training_set(reference, exactness_run, train_gradients):
    count = len(reference.train_ids)
    assert exactness_run["identity"].shape == (len(PROMPTS), count) and count == DOCUMENTS
    assert len(train_gradients) >= count // REFERENCE_EVERY
    size = sum(p.numel() for p in reference.weights + reference.biases)
    per_layer = 2 * HIDDEN * INTERMEDIATE + INTERMEDIATE + HIDDEN  # c_fc and c_proj, weights and biases
    assert next(iter(train_gradients.values())).numel() == size == LAYERS * per_layer


@pytest.mark.parametrize("task, key", [("language_modeling", "identity"), ("margin", "margin")])
def test_identity_scores_are_gradient_dot_products(reference, exactness_run, train_gradients, task, key):
    """Score = measurement gradient . training-loss gradient, weights and biases of the tracked modules."""
    indices = list(train_gradients)
    stacked = torch.stack([train_gradients[i] for i in indices])
    queries = torch.stack([reference.gradient(reference.measurement(q, task)) for q in range(len(PROMPTS))])
    expected = queries @ stacked.T
    pipeline = exactness_run[key][:, indices]
    assert (relative_error(pipeline, expected) <= TOLERANCE).all(), relative_error(pipeline, expected)
    # The test can tell: leaving the biases out of the gradients misses by far more than the tolerance.
    weight_count = sum(p.numel() for p in reference.weights)
    without_bias = queries[:, :weight_count] @ stacked[:, :weight_count].T
    assert (relative_error(pipeline, without_bias) > 100 * TOLERANCE).any()


@pytest.mark.parametrize("task, key", [("language_modeling", "identity"), ("margin", "margin")])
def test_positive_score_means_a_step_on_the_example_lowers_the_measurement(reference, exactness_run, task, key):
    """The documented sign: a gradient step on the most positively scored example lowers the
    completion's measurement (cross-entropy, or negated margin), one on the most negatively scored
    example raises it, and by the first-order amount -learning_rate x score."""
    saved = reference.snapshot()
    for query, row in enumerate(exactness_run[key].double()):
        for index in (int(row.argmax()), int(row.argmin())):
            score = float(row[index])
            learning_rate = 1e-3 / abs(score)  # a first-order change of 1e-3
            with torch.no_grad():
                before = float(reference.measurement(query, task))
            reference.step(index, learning_rate)
            with torch.no_grad():
                after = float(reference.measurement(query, task))
            reference.restore(saved)
            change = after - before
            assert (change < 0) == (score > 0), (query, index, score, change)
            assert change == pytest.approx(-learning_rate * score, rel=0.02), (query, index, score, change)
    assert (exactness_run[key].amax(dim=1) > 0).all() and (exactness_run[key].amin(dim=1) < 0).all()


def test_scores_do_not_depend_on_batch_sizes(exactness_run):
    """Train batch 16 vs 64, query batch 3 vs 1, and for EK-FAC also factors fitted with batch 8 vs 50
    (with float64 accumulation, see `exactness_run`)."""
    assert (relative_error(exactness_run["identity_batches"], exactness_run["identity"]) <= TOLERANCE).all()
    assert (relative_error(exactness_run["ekfac_batches"], exactness_run["ekfac"]) <= TOLERANCE).all(), (
        relative_error(exactness_run["ekfac_batches"], exactness_run["ekfac"]))
    # ...while EK-FAC's preconditioning does change the scores: the comparison is not vacuous.
    assert (relative_error(exactness_run["ekfac"], exactness_run["identity"]) > 0.1).all()


@pytest.mark.parametrize("strategy", ["identity", "ekfac"])
def test_self_scores_equal_the_diagonal_of_pairwise_scores(exactness_run, reference, train_gradients, tmp_path,
                                                            strategy):
    """Query set = training set: Kronfluence's self-influence equals the diagonal of the pairwise
    scores; with identity both equal the squared norm of the autograd training gradient."""
    artifacts = exactness_run["artifacts"]
    factors = f"exact_{strategy}"
    work = tmp_path / "work"
    (work / "influence").mkdir(parents=True)
    (work / "influence" / f"factors_{factors}").symlink_to(artifacts / "influence" / f"factors_{factors}")
    analyzer = build_analyzer(artifacts / "model", work, factors)
    indices = list(train_gradients)[:24]
    subset = load_training_examples(artifacts / "data/train").select(indices)
    analyzer.compute_pairwise_scores(scores_name="pairwise", factors_name=factors, query_dataset=subset,
                                     train_dataset=subset, per_device_query_batch_size=len(indices),
                                     per_device_train_batch_size=8, overwrite_output_dir=True)
    analyzer.compute_self_scores(scores_name="self", factors_name=factors, train_dataset=subset,
                                 per_device_train_batch_size=5, overwrite_output_dir=True)
    pairwise = analyzer.load_pairwise_scores("pairwise")["all_modules"]
    self_scores = analyzer.load_self_scores("self")["all_modules"]
    assert pairwise.shape == (len(indices), len(indices)) and self_scores.shape == (len(indices),)
    assert relative_error(self_scores, pairwise.diagonal()) <= TOLERANCE
    assert (self_scores > 0).all()
    if strategy == "identity":
        norms = torch.stack([train_gradients[i].square().sum() for i in indices])
        assert relative_error(self_scores, norms) <= TOLERANCE


# ---- the order of the training examples ----------------------------------------------------------

def test_factors_fitted_on_length_sorted_examples_equal_those_in_corpus_order(imported, tmp_path, monkeypatch):
    """fit_factors feeds Kronfluence the examples sorted by length within each data partition (less
    padding); the factors are sums over examples, so they must equal the corpus-order fit to float
    rounding (float64 sums of float32 gradients), also when a phase takes only its first MAX_EXAMPLES."""
    from influence_core import factors

    flags = ["--artifacts_uri", str(imported), "--factor_batch_size", "8",
             "--covariance_max_examples", "70", "--covariance_data_partitions", "2",
             "--lambda_max_examples", "80", "--lambda_data_partitions", "3",
             *[arg for dtype in ("activation_covariance", "gradient_covariance", "lambda")
               for arg in (f"--{dtype}_dtype", "float64")]]
    settings = load_settings(FitFactorsSettings, flags)
    examples = load_training_examples(imported / "data/train")
    sorted_lengths = [len(ids) for ids in factors.phase_data(examples, 70, 2, settings)["dataset"]["input_ids"]]
    assert sorted_lengths[:35] == sorted(sorted_lengths[:35], reverse=True) != sorted_lengths[:35][::-1]

    def fit(work: Path) -> dict[str, dict[str, torch.Tensor]]:
        directory = factors.fit_factors(imported / "model", imported / "data/train", settings, work)
        return {path.stem: load_file(str(path)) for path in directory.glob("*.safetensors")
                if "eigenvectors" not in path.stem}  # eigenvectors are defined up to sign

    length_sorted = fit(tmp_path / "sorted")
    monkeypatch.setattr(factors, "length_sorted", lambda examples, partitions: (examples, None))
    corpus_order = fit(tmp_path / "corpus_order")
    assert set(length_sorted) == set(corpus_order) and "lambda_matrix" in length_sorted
    for name, by_module in corpus_order.items():
        for module, expected in by_module.items():
            got = length_sorted[name][module]
            scale = expected.abs().max().clamp(min=1e-30)
            assert ((got - expected).abs().max() / scale).item() < 1e-6, (name, module)  # a wrong example: 1e-2
