"""The demo corpus is deterministic, varied, and plants each fact in a few documents only."""

from __future__ import annotations

import json

from influence_core.demo_corpus import FACTS, HARD_FACTS, build_demo_corpus
from influence_core.fusion import words
from tests.conftest import ROOT


def test_deterministic():
    assert build_demo_corpus(300, seed=3) == build_demo_corpus(300, seed=3)
    assert build_demo_corpus(300, seed=3).texts != build_demo_corpus(300, seed=4).texts


def test_facts_planted_in_few_documents_that_state_them():
    corpus = build_demo_corpus(600)
    for fact, planted in zip(FACTS, corpus.facts):
        assert 4 <= len(planted["documents"]) <= 10
        answer = fact.completion.strip()
        stating = [i for i, text in enumerate(corpus.texts) if any(s in text for s in fact.statements)]
        assert sorted(planted["documents"]) == stating
        # The answer appears only where the fact is stated; the subject appears in distractors too.
        assert {i for i, text in enumerate(corpus.texts) if answer in text} == set(stating)
        assert sum(any(d in text for d in fact.distractors) for text in corpus.texts) >= len(fact.distractors)


def test_lengths_vary():
    lengths = sorted(len(text.split()) for text in build_demo_corpus(600).texts)
    assert lengths[0] < 15 and lengths[-1] > 150
    assert sum(length < 25 for length in lengths) >= len(lengths) / 5


def test_shipped_prompts_ask_every_fact():
    prompts = json.loads((ROOT / "prompts.json").read_text())
    pairs = {(p["prompt"], p["completion"]) for p in prompts}
    assert {(fact.prompt, fact.completion) for fact in FACTS} <= pairs
    assert len(prompts) > len(FACTS)
    assert any(not p["prompt"].isascii() for p in prompts)


def test_demo_hard_puts_the_completion_words_where_the_fact_is_not_stated():
    """demo-hard: every completion word also occurs in at least 20 documents that do not state the
    fact, and the prompt's relation holds for other subjects, so word overlap points elsewhere."""
    corpus = build_demo_corpus(600, corpus="demo-hard")
    assert corpus == build_demo_corpus(600, corpus="demo-hard")
    prompts = json.loads((ROOT / "prompts-hard.json").read_text())
    assert {(fact.prompt, fact.completion) for fact in HARD_FACTS} <= {(p["prompt"], p["completion"]) for p in prompts}
    for fact, planted in zip(HARD_FACTS, corpus.facts):
        stating = [i for i, text in enumerate(corpus.texts) if any(s in text for s in fact.statements)]
        assert sorted(planted["documents"]) == stating and 4 <= len(stating) <= 8
        for word in words(fact.completion):
            elsewhere = [i for i, text in enumerate(corpus.texts) if word in words(text) and i not in stating]
            assert len(elsewhere) >= 20, (fact.completion, word, len(elsewhere))
        assert sum(any(r in text for r in fact.relatives) for text in corpus.texts) >= len(fact.relatives)
    assert build_demo_corpus(600).texts != corpus.texts
