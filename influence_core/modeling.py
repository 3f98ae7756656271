"""Models: GPT-Neo presets trained from scratch, and loading any saved causal LM for analysis."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from influence_core.errors import ConfigError
from influence_core.sources import MODEL_FILES, is_location
from influence_core.storage import download_directory, is_transient, read_uri, unreachable

# Named sizes. "tiny" trains on a laptop CPU in about a minute; "gpt-neo-125m" is the architecture
# of EleutherAI/gpt-neo-125M (12 layers, hidden 768, 12 heads, alternating global/local attention).
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
                 attention_types=[[["global", "local"], 2]], window_size=64),
    "small": dict(hidden_size=256, num_layers=6, num_heads=8, intermediate_size=1024,
                  attention_types=[[["global", "local"], 3]], window_size=128),
    "gpt-neo-125m": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=None,
                         attention_types=[[["global", "local"], 6]], window_size=256),
}


def build_model(preset: str, tokenizer: PreTrainedTokenizerBase, max_length: int,
                seed: int | None = None) -> GPTNeoForCausalLM:
    """A new model of the preset; its initial weights follow `seed` when one is given."""
    if seed is not None:
        torch.manual_seed(seed)
    return GPTNeoForCausalLM(preset_config(preset, len(tokenizer), max_length, bos_token_id=tokenizer.bos_token_id,
                                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def preset_config(preset: str, vocab_size: int, max_length: int, **token_ids: int | None) -> GPTNeoConfig:
    """The config of a preset's GPT-Neo (build_model's; the plan's before anything is trained)."""
    return GPTNeoConfig(vocab_size=vocab_size, max_position_embeddings=max(max_length, 128), **token_ids,
                        **PRESETS[preset])


# The modules Kronfluence tracks unless TRACKED_MODULES says otherwise: the MLP projections of
# every block, by architecture (config.model_type), as a pattern over module names.
MLP_PROJECTIONS = {
    "gpt_neo": r"\.mlp\.c_(fc|proj)$",
    "gpt2": r"\.mlp\.c_(fc|proj)$",  # Conv1D in transformers; analysed as Linear (with_linear_layers)
    "gpt_neox": r"\.mlp\.dense_(h_to_4h|4h_to_h)$",  # Pythia
    "llama": r"\.mlp\.(gate|up|down)_proj$",
    "mistral": r"\.mlp\.(gate|up|down)_proj$",
    "qwen2": r"\.mlp\.(gate|up|down)_proj$",
}


WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)  # save_pretrained's, one file or shards


def resolve_model(model: str, tracked_modules: str | None, work_dir: Path) -> Path:
    """MODEL as a local directory: itself, or downloaded from an fsspec URL or the Hugging Face Hub.
    Checked before the weights are read or downloaded: it must hold a config and safetensors
    weights, and its architecture modules to track (or TRACKED_MODULES must match some)."""
    if "://" in model:  # a bucket: the config first, the weights only once it passes
        config_dir = work_dir / "source-config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / CONFIG_NAME).write_bytes(read_uri(f"{model.rstrip('/')}/{CONFIG_NAME}", "MODEL"))
        checked_tracked_modules(config_dir, tracked_modules)
        local = download_directory(model, work_dir / "source-model")
    elif is_location(model):
        local = Path(model).expanduser()
        if not local.is_dir():
            raise ConfigError(f"MODEL={model}: {'is not a directory' if local.exists() else 'does not exist'}; "
                              "expected a directory made by save_pretrained, a Hugging Face model name or a URL")
    else:
        local = _from_hub(model, work_dir)
    if not (local / CONFIG_NAME).is_file():
        raise ConfigError(f"MODEL={model}: no {CONFIG_NAME} there: not a saved model (save_pretrained writes one)")
    if not any((local / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"MODEL={model}: no safetensors weights there ({' or '.join(WEIGHT_FILES)}); only "
                          "safetensors are loaded: save_pretrained(..., safe_serialization=True) writes them")
    checked_tracked_modules(local, tracked_modules)
    return local


def _from_hub(name: str, work_dir: Path) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=MODEL_FILES, cache_dir=work_dir / "hub"))
    except Exception as error:  # a failure to fetch a user's model name: an outage, or bad input
        if is_transient(error):
            raise unreachable(f"the Hugging Face Hub for MODEL={name}", error) from None
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f"MODEL={name}: not a local directory, and not fetched from the Hugging Face Hub "
                          f"({reason})") from None


def pretrained_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The model's own tokenizer; padding uses its end-of-text token when it has no pad token (no
    token is added: the model's embeddings stay as they are, and padding is masked anyway)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(model_dir: Path, dtype: str, max_length: int) -> PreTrainedModel:
    """MODEL for fine-tuning or publishing, in `dtype`, as transformers builds it (Conv1D stays);
    refused in one line when MAX_LENGTH exceeds the positions it has."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, dtype=getattr(torch, dtype))
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise ConfigError(f"invalid setting MAX_LENGTH (--max_length): MODEL has {positions} positions, "
                          f"got {max_length}")
    return model


def load_model(model_dir: str | Path) -> PreTrainedModel:
    """Load a saved causal LM (safetensors only, never remote code) in float32 and eval mode, its
    Conv1D layers (GPT-2) as equivalent Linear layers."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, dtype=torch.float32)
    return with_linear_layers(model).eval()


def with_linear_layers(model: PreTrainedModel) -> PreTrainedModel:
    """Replace transformers' Conv1D layers (GPT-2's projections: y = x W + b, W stored in x out) by
    nn.Linear layers computing the same (W transposed): Kronfluence tracks Linear and Conv2d only."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            inputs, outputs = module.weight.shape
            linear = nn.Linear(inputs, outputs, device=module.weight.device, dtype=module.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


def skeleton(model_dir: str | Path) -> PreTrainedModel:
    """The saved model's modules, as analysed, without its weights (on the meta device: nothing is
    allocated)."""
    with torch.device("meta"):
        return with_linear_layers(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)))


def linear_module_names(model_dir: str | Path) -> list[str]:
    """The names of the model's Linear modules, read from its config (no weights are loaded)."""
    return [name for name, module in skeleton(model_dir).named_modules() if isinstance(module, nn.Linear)]


def weight_count(model_dir: str | Path, names: list[str]) -> int:
    """The number of weights of the named modules (from the config; no weights are loaded)."""
    model = skeleton(model_dir)
    return sum(parameter.numel() for name in names for parameter in model.get_submodule(name).parameters())


def tracked_module_names(model_dir: str | Path, pattern: str | None = None) -> list[str]:
    """The modules Kronfluence tracks: the MLP projections of every block (MLP_PROJECTIONS), or with
    `pattern` every Linear module whose name it matches (re.search, e.g. "mlp|attn"). Empty for an
    architecture without a known default."""
    return tracked_names_in(skeleton(model_dir), pattern)


def tracked_names_in(model: PreTrainedModel, pattern: str | None = None) -> list[str]:
    """tracked_module_names of a model already built (its skeleton, say)."""
    pattern = pattern or MLP_PROJECTIONS.get(model.config.model_type)
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and pattern and re.search(pattern, name)]


def checked_tracked_modules(model_dir: str | Path, pattern: str | None) -> list[str]:
    """tracked_module_names, or one line saying why there are none and which Linear modules there are."""
    names = tracked_module_names(model_dir, pattern)
    if names:
        return names
    linear = ", ".join(linear_module_names(model_dir))
    if pattern:
        raise ConfigError(f"TRACKED_MODULES={pattern}: matches none of the model's Linear modules ({linear})")
    model_type = AutoConfig.from_pretrained(model_dir).model_type
    raise ConfigError(f"the model's architecture ({model_type}) has no known modules to track: set TRACKED_MODULES, "
                      f"a regular expression over its Linear modules ({linear})")


def block_of(module_name: str) -> int | None:
    """The block a module belongs to: the first number in its name (transformer.h.3.mlp.c_fc: 3;
    model.layers.3.mlp.up_proj: 3)."""
    found = re.search(r"\.(\d+)\.", module_name)
    return int(found.group(1)) if found else None


def mlp_module_names(num_layers: int, layers: list[int] | None = None) -> list[str]:
    """GPT-Neo's MLP projections: c_fc and c_proj of each (or the given) block."""
    layers = range(num_layers) if layers is None else layers
    return [f"transformer.h.{i}.mlp.{name}" for i in layers for name in ("c_fc", "c_proj")]
