"""External inputs, fingerprinted by what they hold: the corpus of DATASET, and the model and
tokenizer of MODEL and TOKENIZER_NAME. The stages that read them record these digests among their
inputs (by setting name), so an edited document, a folder saved again or a Hub repository with a
new commit makes them run again, and the lds stage refuses to retrain from a MODEL that changed.

- a built-in demo corpus: the digest of its documents (generated from SEED, in milliseconds);
- a file, folder or URL (DATASET, MODEL, TOKENIZER_NAME): the digest of its files' bytes (in an
  object store, their ETags), so nothing needs parsing or downloading to tell;
- a Hugging Face Hub name: the commit its main revision resolves to.
A Hub or bucket that cannot be reached is exit 3 (worth a retry); one that says there is no such
repository is bad input (exit 2).
"""

from __future__ import annotations

from pathlib import Path

from influence_core.artifacts import Model, digest_of
from influence_core.errors import ConfigError
from influence_core.storage import content_digest, is_transient, redact, unreachable

# The files of a saved model or tokenizer that loading reads: config, weights, tokenizer files.
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def is_location(name: str) -> bool:
    """A path or URL, as opposed to a Hugging Face Hub name."""
    return "://" in name or Path(name).exists() or name.startswith((".", "/", "~"))


def dataset_digest(dataset: str, seed: int, num_examples: int | None) -> str:
    from influence_core.data import DEFAULT_DEMO_DOCUMENTS, is_file_source
    from influence_core.demo_corpus import CORPORA, build_demo_corpus

    if dataset in CORPORA:
        demo = build_demo_corpus(num_examples or DEFAULT_DEMO_DOCUMENTS, seed=seed, corpus=dataset)
        return digest_of({"texts": demo.texts, "facts": demo.facts})
    if is_file_source(dataset):
        return _files_digest(dataset, "DATASET", None)
    return _hub_revision(dataset, "DATASET", "dataset")


def model_digest(model: str, setting: str = "MODEL") -> str:
    """MODEL's (or TOKENIZER_NAME's) digest: of a folder's or URL's files, or a Hub name's commit."""
    if is_location(model):
        return _files_digest(str(Path(model).expanduser()) if "://" not in model else model, setting, MODEL_FILES)
    return _hub_revision(model, setting, "model")


def train_inputs(dataset: str, seed: int, num_examples: int | None, model: str | None,
                 tokenizer_name: str | None) -> dict[str, str]:
    """The external inputs of the train and import_model stages, for their manifests."""
    inputs = {"DATASET": dataset_digest(dataset, seed, num_examples)}
    if model:
        inputs["MODEL"] = model_digest(model)
    if tokenizer_name and not model:
        inputs["TOKENIZER_NAME"] = model_digest(tokenizer_name, "TOKENIZER_NAME")
    return inputs


def _files_digest(location: str, setting: str, names: list[str] | None) -> str:
    try:
        return content_digest(location, names)
    except FileNotFoundError:
        raise ConfigError(f"{setting}={redact(location)}: does not exist (expected a path or URL of its files)"
                          ) from None
    except Exception as error:
        if is_transient(error):
            raise unreachable(f"{setting}={redact(location)}", error) from None
        raise


def _hub_revision(name: str, setting: str, repo_type: str) -> str:
    """The commit a Hub repository's main revision is at now."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        return f"{name}@{HfApi().repo_info(name, repo_type=repo_type).sha}"
    except RepositoryNotFoundError:
        raise ConfigError(f"{setting}={name}: not a local path, and the Hugging Face Hub has no {repo_type} of "
                          "that name (or it is private: log in with HF_TOKEN)") from None
    except Exception as error:
        if is_transient(error):
            raise unreachable(f"the Hugging Face Hub for {setting}={name}", error) from None
        if isinstance(error, HfHubHTTPError):
            raise ConfigError(f"{setting}={name}: the Hugging Face Hub refused it ({str(error).splitlines()[0][:200]})"
                              ) from None
        raise


def check_source_unchanged(model: Model, stage: str) -> None:
    """A stage that trains as `model` was trained (the lds stage's subsets, the ensemble's members)
    starts from the same MODEL: refused when MODEL's content has changed since."""
    if model.source_digest is not None and model_digest(model.source) != model.source_digest:
        raise ConfigError(f"{stage}: MODEL={model.source} has changed since {model.url} was fine-tuned from it, so "
                          "training again would start from another model: rerun train with FORCE=true")
