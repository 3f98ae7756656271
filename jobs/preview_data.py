"""Print the first few documents of the configured corpus (no artifacts written)."""

from __future__ import annotations

from influence_core.settings import PreviewDataSettings


def main(settings: PreviewDataSettings) -> None:
    from influence_core.data import load_corpus
    from influence_core.demo_corpus import CORPORA

    corpus = load_corpus(settings.dataset, settings.num_preview if settings.dataset not in CORPORA else
                         settings.num_examples, settings.text_column, settings.dataset_config,
                         settings.dataset_split, settings.seed)
    for number, text in enumerate(corpus.texts[: settings.num_preview], start=1):
        print(f"Entry {number}:")
        print(text)
        print("\n" + "-" * 50 + "\n")

