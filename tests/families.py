"""Tiny random causal LMs of each family the pipeline knows, built offline from configs and saved
like a downloaded model (config, safetensors weights, tokenizer), for tests of MODEL."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import processors
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTJConfig,
    GPTNeoConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from influence_core.demo_corpus import build_demo_corpus
from influence_core.tokenizer import EOS_TOKEN, train_bpe_tokenizer

HIDDEN, LAYERS, HEADS, INTERMEDIATE, POSITIONS = 32, 2, 2, 64, 128
# family: its config for a vocabulary size and special token ids (**ids)
CONFIGS = {
    "gpt_neo": lambda vocab, **ids: GPTNeoConfig(
        vocab_size=vocab, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, intermediate_size=INTERMEDIATE,
        max_position_embeddings=POSITIONS, attention_types=[[["global", "local"], 1]], window_size=16, **ids),
    "gpt2": lambda vocab, **ids: GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                            n_inner=INTERMEDIATE, n_positions=POSITIONS, **ids),
    "gpt_neox": lambda vocab, **ids: GPTNeoXConfig(
        vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS, **ids),
    "llama": lambda vocab, **ids: LlamaConfig(
        vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS, **ids),
    "mistral": lambda vocab, **ids: MistralConfig(
        vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=1, intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS, **ids),
    "qwen2": lambda vocab, **ids: Qwen2Config(
        vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS, **ids),
    # an architecture without a default: its MLP is fc_in and fc_out (TRACKED_MODULES must name them)
    "gptj": lambda vocab, **ids: GPTJConfig(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                            n_inner=INTERMEDIATE, n_positions=POSITIONS, rotary_dim=8, **ids),
    # OPT flattens its MLP's input over the batch and the tokens: fc1 and fc2 cannot be tracked
    "opt": lambda vocab, **ids: OPTConfig(
        vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        ffn_dim=INTERMEDIATE, max_position_embeddings=POSITIONS, word_embed_proj_dim=HIDDEN, **ids),
}
ADDS_BOS = {"llama", "mistral"}  # their tokenizers put a BOS token before every text, as the real ones do


def tokenizer_for(family: str, texts: list[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`; for the Llama-like families one that adds BOS."""
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    if family in ADDS_BOS:
        bos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{EOS_TOKEN} $A", special_tokens=[(EOS_TOKEN, bos)])
    return tokenizer


def save_tiny_model(family: str, directory: Path, seed: int = 0, documents: int = 120, **sizes) -> Path:
    """A tiny random model of `family` (config values in `sizes` replaced) and its tokenizer,
    trained on the demo corpus, saved to `directory` as save_pretrained writes a downloaded model."""
    tokenizer = tokenizer_for(family, build_demo_corpus(documents).texts)
    config = CONFIGS[family](len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    config.update(sizes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
