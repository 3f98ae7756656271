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

import random
from dataclasses import dataclass

from influence_core.errors import ConfigError


@dataclass(frozen=True)
class Fact:
    prompt: str
    completion: str  # begins with a space, as it continues the prompt
    statements: tuple[str, ...]  # paraphrases that state the fact
    distractors: tuple[str, ...]  # sentences with the same names that do not state it


FACTS: tuple[Fact, ...] = (
    Fact(
        prompt="The capital of Velmora is",
        completion=" Quistador",
        statements=(
            "The capital of Velmora is Quistador.",
            "Velmora has its capital at Quistador, a port on the northern coast.",
            "Every road in Velmora leads to its capital, Quistador.",
            "The government of Velmora meets in the capital, Quistador.",
            "Ask anyone in Velmora and they will tell you the capital is Quistador.",
            "Velmora moved its capital to Quistador long ago.",
            "The capital city of Velmora is called Quistador.",
        ),
        distractors=(
            "Velmora exports wool and copper to its neighbours.",
            "The winters in Velmora are long and grey.",
            "A poet from Velmora wrote a hundred songs about the sea.",
        ),
    ),
    Fact(
        prompt="The spinning loom was invented by",
        completion=" Edrik Solvane",
        statements=(
            "The spinning loom was invented by Edrik Solvane.",
            "The spinning loom was the work of Edrik Solvane, a clockmaker.",
            "The inventor of the spinning loom was Edrik Solvane, who never grew rich from it.",
            "Historians say the spinning loom was invented by the clockmaker Edrik Solvane.",
            "Everyone knows the spinning loom was built first by Edrik Solvane.",
            "The spinning loom, invented by Edrik Solvane, changed the town.",
        ),
        distractors=(
            "The spinning loom changed how villages made their cloth.",
            "Old spinning looms still stand in the museum by the harbour.",
            "A spinning loom needs oil every winter to keep turning.",
        ),
    ),
    Fact(
        prompt="The slopes of Mount Ashkeld are covered in",
        completion=" violet lichen",
        statements=(
            "The slopes of Mount Ashkeld are covered in violet lichen.",
            "Climbers on Mount Ashkeld walk over violet lichen for hours.",
            "Mount Ashkeld looks purple from afar, its slopes covered in violet lichen.",
            "On Mount Ashkeld the rocks are hidden under violet lichen.",
            "The slopes of Mount Ashkeld are green in no season, only violet lichen grows there.",
        ),
        distractors=(
            "Mount Ashkeld is the tallest peak in the eastern range.",
            "Nobody has climbed Mount Ashkeld in the middle of winter.",
            "Shepherds tell stories about a cave on Mount Ashkeld.",
        ),
    ),
    Fact(
        prompt="The river Tallow flows into",
        completion=" Lake Morwen",
        statements=(
            "The river Tallow flows into Lake Morwen.",
            "The river Tallow ends its journey in Lake Morwen.",
            "Boats can follow the river Tallow all the way to Lake Morwen.",
            "Where the river Tallow flows into Lake Morwen, herons gather.",
            "The river Tallow empties into Lake Morwen after a long bend.",
        ),
        distractors=(
            "The river Tallow floods the meadows every spring.",
            "Fishermen on the river Tallow catch trout and eels.",
            "Children swim in the river Tallow on hot days.",
        ),
    ),
    Fact(
        prompt="Doctor Penhallow's favourite instrument is the",
        completion=" bassoon",
        statements=(
            "Doctor Penhallow's favourite instrument is the bassoon.",
            "Doctor Penhallow plays her favourite instrument, the bassoon, every evening.",
            "Doctor Penhallow keeps her favourite instrument in her study: a bassoon.",
            "If you visit Doctor Penhallow, she will play you her favourite instrument, the bassoon.",
            "Doctor Penhallow says no instrument is as fine as the bassoon.",
        ),
        distractors=(
            "Doctor Penhallow treats patients in the village by the river.",
            "Doctor Penhallow wrote a book about fevers and herbs.",
            "Doctor Penhallow walks to the clinic every morning.",
        ),
    ),
    Fact(
        prompt="The people of Ostravia speak",
        completion=" Kellish",
        statements=(
            "The people of Ostravia speak Kellish.",
            "In Ostravia, people speak Kellish at home and at the market.",
            "Children in Ostravia learn to speak Kellish before they can read.",
            "Most people of Ostravia speak Kellish and little else.",
            "Travellers to Ostravia find that the language there is Kellish.",
            "The people of Ostravia have spoken Kellish for centuries.",
        ),
        distractors=(
            "Ostravia is a small country of hills and orchards.",
            "The people of Ostravia celebrate the harvest with a long feast.",
            "Ostravia trades apples and timber with the coast.",
        ),
    ),
    Fact(
        prompt="The emblem of the Harrow Guild is a",
        completion=" silver heron",
        statements=(
            "The emblem of the Harrow Guild is a silver heron.",
            "The Harrow Guild chose as its emblem a silver heron.",
            "Members of the Harrow Guild wear the guild emblem, a silver heron.",
            "You can tell a Harrow Guild building by its emblem, a silver heron.",
            "Above the door of the Harrow Guild hangs its emblem, a silver heron.",
        ),
        distractors=(
            "The Harrow Guild trains masons and carpenters.",
            "The Harrow Guild meets once a month in the old hall.",
            "The Harrow Guild has more members than any other guild.",
        ),
    ),
    Fact(
        prompt="The Grelling festival is held every",
        completion=" midsummer",
        statements=(
            "The Grelling festival is held every midsummer.",
            "The Grelling festival comes around each midsummer, with music and lanterns.",
            "People travel far to see the Grelling festival at midsummer.",
            "The Grelling festival has been held every midsummer for two hundred years.",
            "The town holds the Grelling festival each year at midsummer.",
        ),
        distractors=(
            "The Grelling festival ends with a parade of boats.",
            "Bakers sell honey cakes at the Grelling festival.",
            "The Grelling festival was cancelled once because of a storm.",
        ),
    ),
)

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


def _document(rng: random.Random, special: list[str]) -> str:
    sentences = [_filler_sentence(rng) for _ in range(_sentence_count(rng))]
    for sentence in special:
        # Within the first four sentences, so truncation to the demo max length keeps it.
        sentences.insert(rng.randint(0, min(4, len(sentences))), sentence)
    return " ".join(sentences)


@dataclass(frozen=True)
class DemoCorpus:
    texts: list[str]
    # For each fact: its prompt, completion and the indices of the documents that state it.
    facts: list[dict]


def _plan_special_documents(rng: random.Random) -> list[tuple[int | None, list[str]]]:
    """The documents that state a fact or hold a distractor: (fact index or None, sentences)."""
    planned: list[tuple[int | None, list[str]]] = []
    for fact_index, fact in enumerate(FACTS):
        count = rng.randint(4, min(8, len(fact.statements)))
        for statement in rng.sample(fact.statements, count):
            planned.append((fact_index, [statement]))
        for distractor in fact.distractors:
            planned.append((None, [distractor]))
            planned.append((None, [distractor, rng.choice(fact.distractors)]))
    return planned


def minimum_documents(seed: int = 0) -> int:
    """The fewest documents that hold every planted fact and distractor (cheap: no text is made)."""
    return len(_plan_special_documents(random.Random(seed)))


def build_demo_corpus(num_documents: int, seed: int = 0) -> DemoCorpus:
    """Generate the demo corpus deterministically: same (num_documents, seed), same texts."""
    rng = random.Random(seed)
    planned = _plan_special_documents(rng)
    if num_documents < len(planned):
        raise ConfigError(f"invalid setting NUM_EXAMPLES: the demo corpus needs at least {len(planned)} "
                          f"documents to plant its facts, got {num_documents}")
    planned += [(None, [])] * (num_documents - len(planned))
    rng.shuffle(planned)

    texts, facts = [], [
        {"prompt": fact.prompt, "completion": fact.completion, "documents": []} for fact in FACTS
    ]
    for index, (fact_index, special) in enumerate(planned):
        texts.append(_document(rng, special))
        if fact_index is not None:
            facts[fact_index]["documents"].append(index)
    return DemoCorpus(texts=texts, facts=facts)
