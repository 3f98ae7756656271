"""Bad input: one clear line on stderr, exit code 2, before any model loads, nothing marked complete."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SMALL, jobs_in_process, one_line_refusal

PROBE = (
    "import sys; from jobs.__main__ import main; code = main(sys.argv[1:]); "
    "heavy = [m for m in ('torch', 'transformers', 'kronfluence') if m in sys.modules]; "
    "print('HEAVY', heavy); sys.exit(code)"
)


def run_probe(args: list[str], env: dict, cwd) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if key != "ARTIFACTS_URI"}
    full_env.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=60)


def write(path, content: str):
    path.write_text(content)
    return str(path)


CASES = {
    "prompts not JSON": (lambda tmp: ["compute_scores", "--prompts", write(tmp / "p.json", "[{'prompt': 1")],
                         "not valid JSON"),
    "prompts empty list": (lambda tmp: ["compute_scores", "--prompts", write(tmp / "p.json", "[]")], "empty"),
    "prompt without completion": (
        lambda tmp: ["compute_scores", "--prompts", write(tmp / "p.json", json.dumps([{"prompt": "Hi"}]))],
        "completion: Field required"),
    "completion not a string": (
        lambda tmp: ["compute_scores", "--prompts",
                     write(tmp / "p.json", json.dumps([{"prompt": "Hi", "completion": 3}]))],
        "valid string"),
    "prompts file missing": (lambda tmp: ["compute_scores", "--prompts", str(tmp / "nope.json")], "file not found"),
    "unknown strategy": (lambda tmp: ["fit_factors", "--factor_strategy", "newton"],
                         "'identity', 'diagonal', 'kfac' or 'ekfac'"),
    "negative batch size": (lambda tmp: ["fit_factors", "--factor_batch_size", "-4"], "FACTOR_BATCH_SIZE"),
    "negative train batch size": (lambda tmp: ["compute_scores", "--train_batch_size", "-1"], "TRAIN_BATCH_SIZE"),
    "name with a path": (lambda tmp: ["fit_factors", "--factors_name", "../escape"], "FACTORS_NAME"),
    "unknown flag": (lambda tmp: ["inspect_scores", "--num_influentials", "5"], "unrecognized arguments"),
    "unknown stage": (lambda tmp: ["fit_factor"], "unknown stage 'fit_factor'"),
    "factors before training": (lambda tmp: ["fit_factors"], "run the train stage first"),
    "scores before factors": (lambda tmp: ["inspect_scores"], "run the compute_scores stage first"),
    "pipeline with bad prompts": (lambda tmp: ["pipeline", "--prompts", write(tmp / "p.json", "[]")], "empty"),
    "empty prompt": (lambda tmp: ["compute_scores", "--prompts",
                                  write(tmp / "p.json", json.dumps([{"prompt": "", "completion": " x"}]))],
                     "at least 1 character"),
    "empty completion": (lambda tmp: ["compute_scores", "--prompts",
                                      write(tmp / "p.json", json.dumps([{"prompt": "Hi", "completion": ""}]))],
                         "at least 1 character"),
    "prompts an object": (lambda tmp: ["compute_scores", "--prompts",
                                       write(tmp / "p.json", json.dumps({"prompt": "Hi", "completion": " x"}))],
                          "expected a list"),
    "prompt entry a string": (lambda tmp: ["compute_scores", "--prompts", write(tmp / "p.json", '["Hi"]')],
                              "expected a list"),
    "unknown key in a prompt": (lambda tmp: ["compute_scores", "--prompts", write(
        tmp / "p.json", json.dumps([{"prompt": "Hi", "completion": " x", "answer": 1}]))], "answer"),
    "max length too small": (lambda tmp: ["train", "--max_length", "8"], "MAX_LENGTH"),
    "vocabulary too small": (lambda tmp: ["train", "--vocab_size", "100"], "VOCAB_SIZE"),
    "zero learning rate": (lambda tmp: ["train", "--learning_rate", "0"], "LEARNING_RATE"),
    "no examples": (lambda tmp: ["train", "--num_examples", "0"], "NUM_EXAMPLES"),
    "demo corpus too small": (lambda tmp: ["train", "--num_examples", "50"], "the demo corpus needs at least"),
    "warmup over 1": (lambda tmp: ["train", "--warmup_ratio", "1.5"], "WARMUP_RATIO"),
    "micro batches not dividing the batch": (lambda tmp: ["train", "--batch_size", "16", "--micro_batches", "3"],
                                             "MICRO_BATCHES: must divide BATCH_SIZE (16)"),
    "unknown model preset": (lambda tmp: ["train", "--model_preset", "gpt-5"], "MODEL_PRESET"),
    "negative layer": (lambda tmp: ["inspect_factors", "--layer_num", "-1"], "LAYER_NUM"),
    "no influential examples": (lambda tmp: ["inspect_scores", "--num_influential", "0"], "NUM_INFLUENTIAL"),
    "zero query rank": (lambda tmp: ["compute_scores", "--query_gradient_rank", "0"], "QUERY_GRADIENT_RANK"),
    "negative damping": (lambda tmp: ["compute_scores", "--damping_factor=-1e-5"], "DAMPING_FACTOR"),
    "zero score partitions": (lambda tmp: ["compute_scores", "--score_data_partitions", "0"],
                              "SCORE_DATA_PARTITIONS"),
    "unknown dtype": (lambda tmp: ["compute_scores", "--per_sample_gradient_dtype", "float8"],
                      "PER_SAMPLE_GRADIENT_DTYPE"),
    "unknown task": (lambda tmp: ["compute_scores", "--task", "accuracy"], "TASK"),
    "unknown log level": (lambda tmp: ["train", "--log_level", "LOUD"], "LOG_LEVEL"),
    "shard out of range": (lambda tmp: ["compute_scores", "--score_data_partitions", "2", "--shard_index", "2"],
                           "out of range"),
    "shard of the wrong phase": (lambda tmp: ["fit_factors", "--shard_index", "0"], "FACTOR_PHASE=covariance"),
    "non-numeric batch size": (lambda tmp: ["fit_factors", "--factor_batch_size", "four"], "FACTOR_BATCH_SIZE"),
}

# Corpora are read after the training libraries load, but before any model exists.
CORPORA = {
    "empty file": ("docs.jsonl", b"", "no documents"),
    "binary file": ("docs.jsonl", bytes(range(256)) * 8, "cannot read it as json"),
    "not UTF-8": ("docs.txt", "caf\u00e9 cr\u00e8me\n\nsecond\n".encode("latin-1"), "cannot read it as text"),
    "an empty document": ("docs.jsonl", b'{"text": "one"}\n{"text": "  "}\n', "document 1 is empty"),
    "no text column": ("docs.jsonl", b'{"body": "one"}\n', "TEXT_COLUMN=text: not a column"),
    "unknown file type": ("docs.csv", b"text\none\n", "unknown file type"),
    "missing file": (None, None, "file not found"),
}


@pytest.mark.parametrize("case", sorted(CORPORA))
def test_bad_corpus_is_refused_in_one_line(case, tmp_path):
    from influence_core.data import load_corpus
    from influence_core.errors import ConfigError

    name, content, expected = CORPORA[case]
    path = tmp_path / (name or "absent.jsonl")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        load_corpus(str(path), None)
    assert expected in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.slow
def test_bad_corpus_stops_the_train_stage_in_one_line(tmp_path):
    """The refusals above, as the train stage reports them (one case: they share the path)."""
    path = tmp_path / "docs.jsonl"
    path.write_bytes(CORPORA["binary file"][1])
    artifacts = tmp_path / "artifacts"
    line = one_line_refusal(jobs_in_process("train", "--dataset", str(path), env={"ARTIFACTS_URI": str(artifacts)}))
    assert line.startswith(f"error: DATASET={path}: cannot read it as json"), line
    assert not artifacts.exists() or not list(artifacts.rglob("_SUCCESS"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    make_args, expected = CASES[case]
    artifacts = tmp_path / "artifacts"
    result = run_probe(make_args(tmp_path), {"ARTIFACTS_URI": str(artifacts)}, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "HEAVY []" in result.stdout, "a heavy library was imported before the input was checked"
    assert not artifacts.exists() or not list(artifacts.rglob("_SUCCESS"))


def test_missing_input_names_the_artifact_and_stage(tmp_path):
    artifacts = tmp_path / "artifacts"
    (artifacts / "model").mkdir(parents=True)
    (artifacts / "model" / "_SUCCESS").write_text("{}")
    result = run_probe(["compute_scores"], {"ARTIFACTS_URI": str(artifacts)}, cwd=tmp_path)
    assert result.returncode == 2
    assert f"missing input {artifacts}/data/train" in result.stderr and "run the train stage first" in result.stderr


def test_the_original_layer_11_plots_the_last_layer_of_a_shallower_model(demo_run, tmp_path):
    """The original README's --layer_num 11 (the last of GPT-Neo-125M's 12 blocks) on the demo's
    4-layer model: the last block is plotted, with a warning, and the summary says which."""
    code, log = jobs_in_process("inspect_factors", "--layer_num", "11", "--output_dir", str(tmp_path / "plots"),
                                env={"ARTIFACTS_URI": str(demo_run)})
    assert code == 0 and "LAYER_NUM=11" in log and "plotting the last, 3" in log, log[-3000:]
    summary = json.loads((tmp_path / "plots" / "summary.json").read_text())
    assert (summary["layer_asked"], summary["layer_plotted"]) == (11, 3)
    assert (tmp_path / "plots" / "lambda_matrix_h.3.mlp.c_fc.png").is_file()


def copy_artifacts(source, destination, *outputs):
    for output in outputs:
        shutil.copytree(source / output, destination / output)
    return destination


def truncate(path):
    path.write_bytes(path.read_bytes()[:999])


@pytest.mark.parametrize("damage, expected", [
    (lambda model: truncate(model / "model.safetensors"), "model/model.safetensors is missing, truncated or changed"),
    (lambda model: model.joinpath("tokenizer.json").unlink(), "model/tokenizer.json is missing, truncated or changed"),
    (lambda model: model.joinpath("config.json").write_text('{"num_layers": 99}'),
     "model/config.json is missing, truncated or changed"),
])
def test_damaged_model_is_refused(small_trained, tmp_path, damage, expected):
    artifacts = copy_artifacts(small_trained, tmp_path / "artifacts", "model", "data/train")
    damage(artifacts / "model")
    assert expected in one_line_refusal(jobs_in_process("fit_factors", env={"ARTIFACTS_URI": str(artifacts)}))
    assert not (artifacts / "influence/factors_tiny_lm_factors/_SUCCESS").exists()


def test_prompt_longer_than_the_context(demo_run, tmp_path):
    prompts = write(tmp_path / "p.json", json.dumps([{"prompt": "word " * 400, "completion": " end"}]))
    line = one_line_refusal(jobs_in_process("compute_scores", "--prompts", prompts, "--scores_name", "too_long",
                                            env={"ARTIFACTS_URI": str(demo_run)}))
    assert "more than the model's max length 128" in line
    assert not (demo_run / "influence/scores_too_long/_SUCCESS").exists()


def test_a_report_on_scores_of_factors_fitted_again_is_refused(small_pipeline, tmp_path):
    """Factors re-fitted under the same name (FORCE=true) no longer made the scores: per-token
    scores computed with them would not split the published totals."""
    from influence_core.settings import FitFactorsSettings, load_settings
    from jobs import fit_factors

    factors, scores = "influence/factors_tiny_lm_factors", "influence/scores_prompt_scores"
    artifacts = copy_artifacts(small_pipeline, tmp_path / "artifacts", "model", "data/train", factors, scores)
    fields = FitFactorsSettings.model_fields
    flags = [f"--{key.lower()}={value}" for key, value in SMALL.items() if key.lower() in fields]
    fit_factors.main(load_settings(FitFactorsSettings, [*flags, "--artifacts_uri", str(artifacts), "--force"]))
    line = one_line_refusal(jobs_in_process("inspect_scores", env={"ARTIFACTS_URI": str(artifacts)}))
    assert f"{scores} was made from another {artifacts}/{factors}" in line
