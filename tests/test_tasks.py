"""The Kronfluence tasks measure what they say they measure."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from influence_core.data import PadCollator
from influence_core.modeling import mlp_module_names, tracked_module_names
from influence_core.tasks import (
    LanguageModelingTask,
    LanguageModelingWithCustomMeasurementTask,
    LanguageModelingWithMarginMeasurementTask,
    _sample_labels,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=50, max_position_embeddings=16, hidden_size=16, num_layers=2, num_heads=2,
                          attention_types=[[["global", "local"], 1]], window_size=8, intermediate_size=32)
    return GPTNeoForCausalLM(config).eval()


@pytest.fixture()
def batch():
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]])
    return {"input_ids": ids, "attention_mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]),
            "labels": torch.tensor([[-100, -100, -100, 6, 7], [-100, 9, 10, -100, -100]])}


def completion_cross_entropy(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total = 0.0
    for row in range(len(batch["labels"])):
        for position, label in enumerate(batch["labels"][row].tolist()):
            if label != -100:
                total += F.cross_entropy(logits[row, position - 1], torch.tensor(label)).item()
    return total


def test_measurement_is_summed_cross_entropy_of_completion_tokens(model, batch):
    task = LanguageModelingTask(mlp_module_names(2))
    assert task.compute_measurement(batch, model).item() == pytest.approx(completion_cross_entropy(model, batch),
                                                                           rel=1e-5)
    assert task.compute_train_loss(batch, model).item() == pytest.approx(completion_cross_entropy(model, batch),
                                                                          rel=1e-5)


def test_sampled_loss_keeps_masked_positions_out(model, batch):
    task = LanguageModelingTask(mlp_module_names(2))
    torch.manual_seed(0)
    masked = task.compute_train_loss(batch, model, sample=True)
    batch["labels"][0, :3] = torch.tensor([3, 4, 5])
    torch.manual_seed(0)
    assert task.compute_train_loss(batch, model, sample=True).item() != pytest.approx(masked.item())


def test_margin_measurement_is_loss_like(model, batch):
    task = LanguageModelingWithMarginMeasurementTask(mlp_module_names(2))
    before = task.compute_measurement(batch, model).item()
    with torch.no_grad():
        model.lm_head.weight[6] *= 3  # raise the correct completion token's logit scale
        model.lm_head.weight[6] += model.lm_head.weight.mean(0)
    after = task.compute_measurement(batch, model).item()
    assert before != after
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = 0.0
    for row in range(2):
        for position, label in enumerate(batch["labels"][row].tolist()):
            if label != -100:
                scores = logits[row, position - 1]
                others = torch.cat([scores[:label], scores[label + 1:]])
                expected -= (scores[label] - others.logsumexp(0)).item()
    assert after == pytest.approx(expected, rel=1e-5)


def test_custom_template_averages_per_completion_token(model, batch):
    task = LanguageModelingWithCustomMeasurementTask(mlp_module_names(2))
    single = {key: value[:1] for key, value in batch.items()}
    assert task.compute_measurement(single, model).item() == pytest.approx(
        completion_cross_entropy(model, single) / 2, rel=1e-5)


def test_tracks_both_mlp_projections_of_every_block_or_what_tracked_modules_matches(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert tracked_module_names(tmp_path) == mlp_module_names(2) == [
        "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj",
        "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj",
    ]
    assert tracked_module_names(tmp_path, r"h\.1\.attn") == [
        f"transformer.h.1.attn.attention.{name}" for name in ("k_proj", "v_proj", "q_proj", "out_proj")]
    assert len(tracked_module_names(tmp_path, "mlp|attn")) == 2 * (2 + 4)
    assert tracked_module_names(tmp_path, "nothing") == []
    assert LanguageModelingTask(["a", "b"]).get_influence_tracked_modules() == ["a", "b"]


def test_sampled_labels_do_not_depend_on_the_batch(model, batch):
    """The true-Fisher draws are per example, so partitioning or batch size cannot change factors."""
    task = LanguageModelingTask(mlp_module_names(2), seed=7)
    together = task.compute_train_loss(batch, model, sample=True).item()
    torch.manual_seed(123)  # the global RNG plays no part
    apart = sum(task.compute_train_loss({k: v[i:i + 1] for k, v in batch.items()}, model, sample=True).item()
                for i in range(2))
    assert together == pytest.approx(apart, rel=1e-5)
    assert LanguageModelingTask(mlp_module_names(2), seed=8).compute_train_loss(batch, model, sample=True).item() != (
        pytest.approx(together, rel=1e-6))


def test_sampled_labels_follow_the_model_s_predictions():
    """The true Fisher needs labels drawn from the model's own distribution at every position."""
    probabilities = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    rows, length = 8, 1001
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (rows, length), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    batch["labels"][:, :500] = -100  # labelled positions only, as in a query
    logits = probabilities.log().expand(rows * (length - 1), -1)
    sampled = _sample_labels(logits, batch, seed=0).view(rows, length - 1)
    assert (sampled[:, :499] == -100).all()
    drawn = sampled[:, 499:].flatten()
    frequencies = torch.bincount(drawn, minlength=5).double() / drawn.numel()  # 4,008 draws
    assert torch.allclose(frequencies, probabilities.double(), atol=0.02), frequencies


class NanAtPadding(torch.nn.Module):
    """The model, with NaN logits where the attention mask is 0, as attention kernels may give a
    position that attends to nothing: the true-Fisher draws must not read padded positions."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        output.logits = output.logits.masked_fill(attention_mask[..., None] == 0, float("nan"))
        return output


def padded(example: dict, length: int) -> dict:
    """One training example (input_ids, attention_mask) as PadCollator pads it to `length`."""
    return PadCollator(pad_token_id=0, pad_to=length)([example])


def test_sampled_labels_are_drawn_over_each_example_s_own_positions_only(model):
    task = LanguageModelingTask(mlp_module_names(2), seed=7)
    example = {"input_ids": [8, 9, 10, 11], "attention_mask": [1, 1, 1, 1]}
    losses = [task.compute_train_loss(padded(example, length), NanAtPadding(model), sample=True).item()
              for length in (4, 6, 15)]
    assert all(loss == pytest.approx(losses[0], rel=1e-6) for loss in losses), losses


def test_the_same_example_padded_to_other_lengths_gives_the_same_factors(model, tmp_path):
    """Covariance factors (where the sampled labels enter) of [short, long] in one batch (short
    padded) and in batches of one (not padded)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    examples = Dataset.from_dict({"input_ids": [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]}).map(
        lambda row: {"attention_mask": [1] * len(row["input_ids"])})
    factors = []
    for batch_size in (2, 1):
        task = LanguageModelingTask(mlp_module_names(2), seed=3)
        analyzer = Analyzer(analysis_name="padding", model=prepare_model(copy.deepcopy(model), task), task=task,
                            output_dir=str(tmp_path / str(batch_size)), disable_model_save=True, disable_tqdm=True)
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=PadCollator(0)))
        analyzer.fit_all_factors("f", examples, per_device_batch_size=batch_size,
                                 factor_args=FactorArguments(strategy="kfac"))
        factors.append(analyzer.load_covariance_matrices("f"))
    assert {"activation_covariance", "gradient_covariance"} <= factors[0].keys()
    for name in ("activation_covariance", "gradient_covariance"):
        for module, matrix in factors[0][name].items():
            assert torch.allclose(matrix, factors[1][name][module], rtol=1e-4, atol=1e-7), (name, module)
