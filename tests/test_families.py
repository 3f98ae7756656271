"""Bring your own model: tiny random models of each family, built offline from configs and saved
like downloaded ones, imported (MODEL) and analysed by the stages in-process; the scores checked
against plain autograd; a model fine-tuned on the demo corpus finds the planted facts; bad MODEL
and TRACKED_MODULES values refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import load_from_disk
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from influence_core.errors import ConfigError
from influence_core.modeling import MLP_PROJECTIONS, block_of, load_model, tracked_module_names
from influence_core.settings import (
    ComputeScoresSettings,
    FitFactorsSettings,
    ImportModelSettings,
    InspectFactorsSettings,
    InspectScoresSettings,
    load_settings,
)
from jobs import compute_scores, fit_factors, import_model, inspect_factors, inspect_scores
from tests.conftest import ROOT, jobs_in_process, jobs_ok, one_line_refusal
from tests.families import ADDS_BOS, CONFIGS, save_tiny_model

pytestmark = pytest.mark.slow  # a tiny model of each family imported, fine-tuned and scored

FAMILIES = [family for family in CONFIGS if family in MLP_PROJECTIONS]
PROMPTS = [{"prompt": "The capital of Velmora is", "completion": " Quistador"},
           {"prompt": "The river Tallow flows into", "completion": " Lake Morwen"}]
TOLERANCE = 1e-4


def test_gpt2_conv1d_layers_become_linear_layers_with_the_same_logits(tmp_path):
    directory = save_tiny_model("gpt2", tmp_path / "gpt2")
    original = AutoModelForCausalLM.from_pretrained(directory).eval()
    analysed = load_model(directory)
    assert type(original.transformer.h[0].mlp.c_fc).__name__ == "Conv1D"
    assert isinstance(analysed.transformer.h[0].mlp.c_fc, torch.nn.Linear)
    assert isinstance(analysed.transformer.h[0].attn.c_attn, torch.nn.Linear)
    ids = torch.randint(0, original.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (original(input_ids=ids).logits - analysed(input_ids=ids).logits).abs().max().item()
    assert difference <= 1e-5


def reference_scores(artifacts: Path, tracked: list[str], examples: list[int]) -> torch.Tensor:
    """Prompt x example dot products of measurement and training-loss gradients over the tracked
    modules' weights and biases, with plain autograd in float64. The queries are tokenized here,
    as one text (a BOS token only where the tokenizer puts one, at the start)."""
    model = load_model(artifacts / "model").double()
    tokenizer = AutoTokenizer.from_pretrained(artifacts / "model")
    parameters = [p for name in tracked for p in model.get_submodule(name).parameters()]

    def gradient(ids: torch.Tensor, measured_from: int) -> torch.Tensor:
        logits = model(input_ids=ids[None]).logits[0, :-1]
        loss = F.cross_entropy(logits[measured_from - 1:], ids[measured_from:], reduction="sum")
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, parameters)])

    train_ids = load_from_disk(str(artifacts / "data/train"))["input_ids"]
    train = torch.stack([gradient(torch.tensor(train_ids[i]), 1) for i in examples])
    queries = []
    for item in PROMPTS:
        ids = tokenizer(item["prompt"] + item["completion"])["input_ids"]
        completion = len(tokenizer(item["completion"], add_special_tokens=False)["input_ids"])
        queries.append(gradient(torch.tensor(ids), len(ids) - completion))
    return torch.stack(queries) @ train.T


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_of_each_family_is_imported_scored_exactly_and_reported(family, tmp_path):
    source = save_tiny_model(family, tmp_path / "source")
    artifacts = tmp_path / "artifacts"
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    common = ["--artifacts_uri", str(artifacts)]
    dtype = "bfloat16" if family == "qwen2" else "float32"  # one family loaded and saved in bfloat16
    import_model.main(load_settings(ImportModelSettings, [*common, "--model", str(source), "--num_examples", "100",
                                                          "--max_length", "64", "--model_dtype", dtype]))
    saved = load_file(str(artifacts / "model/model.safetensors"))
    assert {str(tensor.dtype) for tensor in saved.values()} == {f"torch.{dtype}"}
    train_ids = load_from_disk(str(artifacts / "data/train"))["input_ids"]
    tokenizer = AutoTokenizer.from_pretrained(artifacts / "model")
    assert all((ids[0] == tokenizer.bos_token_id) == (family in ADDS_BOS) for ids in train_ids)

    # Identity: each score is the dot product of two autograd gradients.
    fit_factors.main(load_settings(FitFactorsSettings, [*common, "--factors_name", "exact",
                                                        "--factor_strategy", "identity"]))
    compute_scores.main(load_settings(ComputeScoresSettings, [*common, "--factors_name", "exact", "--scores_name",
                                                              "exact", "--prompts", str(prompts)]))
    tracked = json.loads((artifacts / "influence/factors_exact/tracked_modules.json").read_text())
    assert tracked == tracked_module_names(artifacts / "model") and len(tracked) == 2 * 2 + 2 * (family in (
        "llama", "mistral", "qwen2"))
    examples = list(range(12))
    scores = load_file(str(artifacts / "influence/scores_exact/pairwise_scores.safetensors"))["all_modules"]
    expected = reference_scores(artifacts, tracked, examples)
    error = ((scores[:, examples].double() - expected).abs().amax(dim=1) / expected.abs().amax(dim=1)).max().item()
    assert error <= TOLERANCE, error

    # The whole analysis at the defaults (EK-FAC), and a report naming its top examples.
    fit_factors.main(load_settings(FitFactorsSettings, common))
    inspect_factors.main(load_settings(InspectFactorsSettings, [*common, "--layer_num", "1"]))  # block 1 of 2
    plots = artifacts / "reports/factors_tiny_lm_factors"
    block = [name.removeprefix("transformer.") for name in tracked if block_of(name) == 1]
    assert block and all((plots / f"lambda_matrix_{name}.png").exists() for name in block)
    summary = json.loads((plots / "summary.json").read_text())
    assert set(summary["modules"]) == {name.removeprefix("transformer.") for name in tracked}
    compute_scores.main(load_settings(ComputeScoresSettings, [*common, "--prompts", str(prompts)]))
    inspect_scores.main(load_settings(InspectScoresSettings, [*common, "--num_influential", "3"]))
    report = json.loads((artifacts / "reports/prompt_scores/report.json").read_text())
    texts = load_from_disk(str(artifacts / "data/train"))["text"]
    for entry in report["prompts"]:
        assert len(entry["top_positive"]) == 3 and all(item["text"] == texts[item["index"]]
                                                        for item in entry["top_positive"])
        item = entry["top_positive"][0]
        assert abs(sum(item["token_scores"]) - item["score"]) <= 1e-3 * abs(item["score"])


def test_a_model_fine_tuned_on_the_demo_corpus_finds_the_planted_facts(tmp_path):
    """A GPT-2 saved to a local directory, fine-tuned with MODEL set (python -m jobs train), then
    analysed by the stages."""
    source = save_tiny_model("gpt2", tmp_path / "gpt2", documents=600, n_embd=128, n_layer=4, n_head=4, n_inner=512)
    common = ["--artifacts_uri", str(tmp_path / "artifacts")]
    log = jobs_ok("train", "--model", str(source), "--num_examples", "300", "--num_train_epochs", "5",
                  env={"ARTIFACTS_URI": str(tmp_path / "artifacts")})
    assert "training " + str(source) in log
    fit_factors.main(load_settings(FitFactorsSettings, common))
    compute_scores.main(load_settings(ComputeScoresSettings, common))
    inspect_scores.main(load_settings(InspectScoresSettings, [*common, "--no-per_token_scores"]))
    report = json.loads((tmp_path / "artifacts/reports/prompt_scores/report.json").read_text())
    assert report["fact_recall_at_10"] >= 0.8, [entry.get("recall_at_10") for entry in report["prompts"]]
    config = json.loads((tmp_path / "artifacts/model/config.json").read_text())
    assert config["model_type"] == "gpt2"


@pytest.mark.parametrize("stage, make_args, message", [
    ("import_model", lambda tmp: ["--model", str(tmp / "no" / "such" / "model")], "does not exist"),
    ("train", lambda tmp: ["--model", str(empty(tmp))], "no config.json there: not a saved model"),
    ("import_model", lambda tmp: ["--model", str(save_tiny_model("gptj", tmp / "gptj"))],
     "architecture (gptj) has no known modules to track: set TRACKED_MODULES"),
    ("import_model", lambda tmp: ["--model", str(save_tiny_model("gpt_neox", tmp / "neox")), "--tracked_modules",
                                  "c_fc"], "TRACKED_MODULES=c_fc: matches none of the model's Linear modules"),
    ("import_model", lambda tmp: [], "import_model needs MODEL"),
])
def test_bad_models_are_refused_in_one_line_before_any_work(stage, make_args, message, tmp_path):
    artifacts = tmp_path / "artifacts"
    line = one_line_refusal(jobs_in_process(stage, *make_args(tmp_path), env={"ARTIFACTS_URI": str(artifacts)}))
    assert message in line, line
    assert not artifacts.exists() or not list(artifacts.rglob("_SUCCESS"))


def empty(tmp: Path) -> Path:
    (tmp / "not-a-model").mkdir()
    (tmp / "not-a-model" / "notes.txt").write_text("weights elsewhere")
    return tmp / "not-a-model"


def test_an_architecture_without_a_default_is_analysed_with_tracked_modules(tmp_path):
    source = save_tiny_model("gptj", tmp_path / "gptj")
    common = ["--artifacts_uri", str(tmp_path / "artifacts")]
    import_model.main(load_settings(ImportModelSettings, [*common, "--model", str(source), "--num_examples", "100",
                                                          "--tracked_modules", r"mlp\.fc_"]))
    fit_factors.main(load_settings(FitFactorsSettings, [*common, "--tracked_modules", r"mlp\.fc_"]))
    compute_scores.main(load_settings(ComputeScoresSettings, common))
    tracked = json.loads((tmp_path / "artifacts/influence/factors_tiny_lm_factors/tracked_modules.json").read_text())
    assert tracked == [f"transformer.h.{i}.mlp.{name}" for i in range(2) for name in ("fc_in", "fc_out")]
    scores = load_file(str(tmp_path / "artifacts/influence/scores_prompt_scores/pairwise_scores.safetensors"))
    assert scores["all_modules"].shape == (len(json.loads((ROOT / "prompts.json").read_text())), 100)


def test_modules_whose_input_is_flattened_over_the_batch_are_refused(tmp_path):
    """OPT's fc1 and fc2 see tokens x features: Kronfluence would score every token as a query."""
    source = save_tiny_model("opt", tmp_path / "opt")
    common = ["--artifacts_uri", str(tmp_path / "artifacts")]
    import_model.main(load_settings(ImportModelSettings, [*common, "--model", str(source), "--num_examples", "100",
                                                          "--tracked_modules", r"\.fc[12]$"]))
    fit_factors.main(load_settings(FitFactorsSettings, [*common, "--tracked_modules", r"\.fc[12]$",
                                                        "--factor_strategy", "identity"]))
    with pytest.raises(ConfigError, match=r"the scores have \d+ rows for 12 prompts"):
        compute_scores.main(load_settings(ComputeScoresSettings, common))
    assert not (tmp_path / "artifacts/influence/scores_prompt_scores/_SUCCESS").exists()


def test_fine_tuning_in_bfloat16_keeps_float32_master_weights(tmp_path):
    """MODEL_DTYPE=bfloat16 runs the passes in bfloat16 but accumulates the updates in float32: a
    small learning rate still moves every LayerNorm weight and every projection weight (in pure
    bfloat16 an update under half a unit in the last place is lost, step after step)."""
    from influence_core.settings import TrainSettings
    from jobs import train

    source = save_tiny_model("gpt2", tmp_path / "gpt2")
    AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(source)  # as bf16 models come
    train.main(load_settings(TrainSettings, ["--artifacts_uri", str(tmp_path / "artifacts"), "--model", str(source),
                                             "--model_dtype", "bfloat16", "--learning_rate", "5e-5",
                                             "--num_train_epochs", "2", "--num_examples", "100", "--max_length", "32"]))
    before, after = ({name: value.float() for name, value in load_file(str(folder / "model.safetensors")).items()}
                     for folder in (source, tmp_path / "artifacts/model"))
    trained = [name for name in before if ".ln_" in name or (".h." in name and name.endswith(".weight"))]
    assert len(trained) > 10
    unchanged = {name: (before[name] == after[name]).float().mean().item() for name in trained}
    assert max(unchanged.values()) < 0.01, {name: share for name, share in unchanged.items() if share >= 0.01}
