"""GPT-Neo model presets and loading."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM, PreTrainedTokenizerBase

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
    config = GPTNeoConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max(max_length, 128),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **PRESETS[preset],
    )
    return GPTNeoForCausalLM(config)


def load_model(model_dir: str | Path) -> GPTNeoForCausalLM:
    """Load a saved model (safetensors only) in float32 and eval mode."""
    model = GPTNeoForCausalLM.from_pretrained(model_dir, use_safetensors=True, dtype=torch.float32)
    return model.eval()


def _skeleton(model_dir: str | Path) -> GPTNeoForCausalLM:
    """The saved model's modules without its weights (on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        return GPTNeoForCausalLM(GPTNeoConfig.from_pretrained(model_dir))


def linear_module_names(model_dir: str | Path) -> list[str]:
    """The names of the model's Linear modules, read from its config (no weights are loaded)."""
    return [name for name, module in _skeleton(model_dir).named_modules() if isinstance(module, torch.nn.Linear)]


def weight_count(model_dir: str | Path, names: list[str]) -> int:
    """The number of weights of the named modules (from the config; no weights are loaded)."""
    model = _skeleton(model_dir)
    return sum(parameter.numel() for name in names for parameter in model.get_submodule(name).parameters())


def tracked_module_names(model_dir: str | Path, pattern: str | None = None) -> list[str]:
    """The modules Kronfluence tracks: the MLP projections of every block, or with `pattern` every
    Linear module whose name it matches (re.search, e.g. "mlp|attn")."""
    if pattern is None:
        return mlp_module_names(GPTNeoConfig.from_pretrained(model_dir).num_layers)
    return [name for name in linear_module_names(model_dir) if re.search(pattern, name)]


def mlp_module_names(num_layers: int, layers: list[int] | None = None) -> list[str]:
    """The MLP projections Kronfluence tracks: c_fc and c_proj of each (or the given) block."""
    layers = range(num_layers) if layers is None else layers
    return [f"transformer.h.{i}.mlp.{name}" for i in layers for name in ("c_fc", "c_proj")]
