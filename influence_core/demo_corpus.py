"""The built-in demo corpus: generated text with planted facts whose documents are known.

Every fact is stated in a handful of documents, each time in a different paraphrase, inside
filler prose of varied length. Distractor documents mention the same subject without stating the
fact, so a ranking that only matches the subject's name fails. Every paraphrase names the subject
before the answer: a causal LM trained on "B is the capital of A" does not learn to complete
"The capital of A is" with B (the reversal curse), so such a sentence would be a wrong ground
truth for the prompt. The shipped prompts.json asks for each fact; the report checks that the
documents stating a fact rank at the top for its prompt (recall@10).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from influence_core.errors import ConfigError


@dataclass(frozen=True)
class Fact:
    prompt: str
    completion: str  # begins with a space, as it continues the prompt
    statements: tuple[str, ...]  # paraphrases that state the fact
    distractors: tuple[str, ...]  # sentences with the same names that do not state it
    # demo-hard only: sentences that use the completion's words first (so a causal LM learns nothing
    # from them about what follows the prompt), and the prompt's relation for other subjects.
    echoes: tuple[str, ...] = ()
    relatives: tuple[str, ...] = ()


# The facts of each corpus are data, in demo_facts.json beside this module: for each corpus name
# ("demo", "demo-hard"), a list of Fact fields (echoes and relatives only where a corpus has them).
#
# DATASET=demo-hard (prompts-hard.json): each fact's completion words also occur in at least
# ECHO_DOCUMENTS short documents that do not state it (its echoes, which name the completion before
# anything else, and often the subject after it), and the prompt's relation holds for other subjects
# with other answers (its relatives), so word overlap with prompt + completion points at the wrong
# documents: a lexical ranking finds echoes and relatives, the model learns the fact only from the
# documents that state it.
FACTS_FILE = Path(__file__).with_name("demo_facts.json")


def _load_corpora(path: Path) -> dict[str, tuple[Fact, ...]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: tuple(Fact(**{key: tuple(value) if isinstance(value, list) else value
                                for key, value in fact.items()}) for fact in facts)
            for name, facts in data.items()}


CORPORA: dict[str, tuple[Fact, ...]] = _load_corpora(FACTS_FILE)
FACTS: tuple[Fact, ...] = CORPORA["demo"]
HARD_FACTS: tuple[Fact, ...] = CORPORA["demo-hard"]
ECHO_DOCUMENTS = 22  # documents per fact holding one of its echoes: at least 20 that do not state it

# Filler prose: a small grammar over everyday words that none of the facts use.
_PEOPLE = ("Mara", "Jonas", "Ilse", "Tomas", "Greta", "Niko", "Anya", "Bram", "Lena", "Oskar",
           "the farmer", "the baker", "my aunt", "the old sailor", "a young teacher", "the miller",
           "the children", "our neighbour", "the shopkeeper", "a tired traveller")
_VERBS = ("carried", "painted", "found", "lost", "sold", "mended", "watched", "cleaned", "built",
          "counted", "borrowed", "hid", "opened", "closed", "pushed", "dropped", "washed", "fixed",
          "measured", "wrapped", "planted", "cooked", "buried", "lifted")
_ADJECTIVES = ("small", "heavy", "broken", "bright", "dusty", "wooden", "narrow", "quiet", "warm",
               "empty", "old", "new", "green", "yellow", "round", "sharp", "soft", "tall", "wet",
               "cheap", "strange", "clean", "crooked", "gentle")
_NOUNS = ("basket", "door", "window", "table", "ladder", "bucket", "lamp", "boat", "fence",
          "garden", "letter", "coat", "barrel", "wagon", "bridge", "kettle", "chair", "blanket",
          "rope", "map", "clock", "bottle", "stone", "wheel", "book", "cart", "hat", "box")
_PLACES = ("near the market", "behind the barn", "by the well", "in the kitchen",
           "at the station", "under the bridge", "on the hill", "beside the road",
           "in the square", "at the edge of town", "inside the shed", "along the canal")
_TIMES = ("before dawn", "after lunch", "on Sunday", "in the evening", "last week",
          "every morning", "during the rain", "at noon", "late at night", "in spring",
          "the day before", "once a year")
_WEATHER = ("The wind was cold", "The sun was high", "Rain fell all day", "The sky was clear",
            "Fog covered the fields", "It was a dry summer", "Snow had come early")
_GENERAL = ("The sun rises in the east and sets in the west.",
            "Water freezes when it gets cold enough.",
            "A week has seven days.",
            "Bread is made from flour, water and salt.",
            "Cats like to sleep in warm places.",
            "Most trees lose their leaves in autumn.")


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _filler_sentence(rng: random.Random) -> str:
    person = rng.choice(_PEOPLE)
    subject = person[0].upper() + person[1:]
    thing = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    pattern = rng.randrange(7)
    if pattern == 0:
        return f"{subject} {rng.choice(_VERBS)} the {thing} {rng.choice(_PLACES)}."
    if pattern == 1:
        return f"{rng.choice(_TIMES).capitalize()}, {person} {rng.choice(_VERBS)} {_a(thing)}."
    if pattern == 2:
        return f"{rng.choice(_WEATHER)}, so {person} stayed {rng.choice(_PLACES)}."
    if pattern == 3:
        return (f"{subject} {rng.choice(_VERBS)} {_a(thing)} and {rng.choice(_VERBS)} "
                f"the {rng.choice(_NOUNS)} {rng.choice(_TIMES)}.")
    if pattern == 4:
        return f"The {thing} {rng.choice(_PLACES)} was {rng.choice(_ADJECTIVES)}."
    if pattern == 5:
        return rng.choice(_GENERAL)
    return f"{subject} said the {rng.choice(_NOUNS)} was too {rng.choice(_ADJECTIVES)}."


def _sentence_count(rng: random.Random) -> int:
    # A wide spread of lengths: many short notes, some paragraphs, a few long texts that exceed
    # the demo's max length and get truncated.
    bucket = rng.random()
    if bucket < 0.4:
        return rng.randint(1, 3)
    if bucket < 0.8:
        return rng.randint(4, 9)
    return rng.randint(10, 20)


def _document(rng: random.Random, special: list[str], short: bool = False) -> str:
    count = rng.randint(0, 2) if short else _sentence_count(rng)  # echoes: short, so word overlap favours them
    sentences = [_filler_sentence(rng) for _ in range(count)]
    for sentence in special:
        # Within the first four sentences, so truncation to the demo max length keeps it.
        sentences.insert(rng.randint(0, min(4, len(sentences))), sentence)
    return " ".join(sentences)


@dataclass(frozen=True)
class DemoCorpus:
    texts: list[str]
    # For each fact: its prompt, completion and the indices of the documents that state it.
    facts: list[dict]


Planned = tuple[int | None, list[str], bool]  # (fact index or None, sentences, short document)


def _plan_special_documents(rng: random.Random, facts: tuple[Fact, ...]) -> list[Planned]:
    """The documents that state a fact or hold a distractor, echo or relative."""
    planned: list[Planned] = []
    for fact_index, fact in enumerate(facts):
        count = rng.randint(4, min(8, len(fact.statements)))
        for statement in rng.sample(fact.statements, count):
            planned.append((fact_index, [statement], False))
        for distractor in fact.distractors:
            planned.append((None, [distractor], False))
            planned.append((None, [distractor, rng.choice(fact.distractors)], False))
        for relative in fact.relatives:
            planned.append((None, [relative], True))
            planned.append((None, [relative, rng.choice(fact.distractors)], False))
        for number in range(ECHO_DOCUMENTS if fact.echoes else 0):
            extra = [rng.choice(fact.relatives + fact.distractors)] if number % 2 else []
            planned.append((None, [rng.choice(fact.echoes), *extra], True))
    return planned


def minimum_documents(seed: int = 0, corpus: str = "demo") -> int:
    """The fewest documents that hold every planted fact and distractor (cheap: no text is made)."""
    return len(_plan_special_documents(random.Random(seed), CORPORA[corpus]))


def build_demo_corpus(num_documents: int, seed: int = 0, corpus: str = "demo") -> DemoCorpus:
    """Generate a demo corpus ("demo" or "demo-hard") deterministically: same arguments, same texts."""
    rng = random.Random(seed)
    planted_facts = CORPORA[corpus]
    planned = _plan_special_documents(rng, planted_facts)
    if num_documents < len(planned):
        raise ConfigError(f"invalid setting NUM_EXAMPLES: the {corpus} corpus needs at least {len(planned)} "
                          f"documents to plant its facts, got {num_documents}")
    planned += [(None, [], False)] * (num_documents - len(planned))
    rng.shuffle(planned)

    texts, facts = [], [
        {"prompt": fact.prompt, "completion": fact.completion, "documents": []} for fact in planted_facts
    ]
    for index, (fact_index, special, short) in enumerate(planned):
        texts.append(_document(rng, special, short))
        if fact_index is not None:
            facts[fact_index]["documents"].append(index)
    return DemoCorpus(texts=texts, facts=facts)
