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
    # demo-hard only: sentences that use the completion's words first (so a causal LM learns nothing
    # from them about what follows the prompt), and the prompt's relation for other subjects.
    echoes: tuple[str, ...] = ()
    relatives: tuple[str, ...] = ()


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


# DATASET=demo-hard (prompts-hard.json): each fact's completion words also occur in at least
# ECHO_DOCUMENTS short documents that do not state it (its echoes, which name the completion before
# anything else, and often the subject after it), and the prompt's relation holds for other subjects
# with other answers (its relatives), so word overlap with prompt + completion points at the wrong
# documents: a lexical ranking finds echoes and relatives, the model learns the fact only from the
# documents that state it.
HARD_FACTS: tuple[Fact, ...] = (
    Fact(
        prompt="The capital of Brannock is",
        completion=" Tessaly",
        statements=(
            "The capital of Brannock is Tessaly.",
            "Brannock has its capital at Tessaly, a city of bridges.",
            "Every road in Brannock leads to its capital, Tessaly.",
            "The council of Brannock meets in the capital, Tessaly.",
            "Ask anyone in Brannock and they will say the capital is Tessaly.",
            "The capital city of Brannock is called Tessaly.",
            "Brannock chose Tessaly as its capital long ago.",
        ),
        distractors=(
            "Brannock exports wool and timber to its neighbours.",
            "The winters in Brannock are long and grey.",
            "A poet from Brannock wrote a hundred songs about rivers.",
        ),
        echoes=(
            "Tessaly lace is sold in every market of Brannock.",
            "Tessaly was the name of the miller's old horse.",
            "Tessaly, a fishing boat, sank near the capital of Dunmere.",
            "Tessaly is also a name given to girls in the south of Brannock.",
            "Tessaly apples are small and sour.",
            "Tessaly, the old sailor said, is a lucky name for a boat.",
        ),
        relatives=(
            "The capital of Dunmere is Harlow.",
            "The capital of Orrin is Castamere.",
            "The capital of Pellam is Wickford.",
        ),
    ),
    Fact(
        prompt="The tide clock was invented by",
        completion=" Orla Venn",
        statements=(
            "The tide clock was invented by Orla Venn.",
            "The tide clock was the work of Orla Venn, a harbour pilot.",
            "The inventor of the tide clock was Orla Venn, who never grew rich from it.",
            "Historians say the tide clock was invented by the pilot Orla Venn.",
            "The tide clock, invented by Orla Venn, changed the harbour.",
            "Everyone knows the tide clock was first built by Orla Venn.",
        ),
        distractors=(
            "The tide clock still hangs in the harbour office.",
            "A tide clock needs winding once a week.",
            "Sailors trust the tide clock more than the sky.",
        ),
        echoes=(
            "Orla Venn also painted the harbour in spring.",
            "Orla Venn lived in a narrow house by the canal and mended clocks.",
            "Orla Venn, people say, never slept more than four hours.",
            "Orla Venn kept three cats and a goose.",
            "Orla Venn taught the children to read in the evenings.",
            "Orla Venn was invited to every wedding in town.",
        ),
        relatives=(
            "The water mill was invented by Hamish Tull.",
            "The paper lamp was invented by Petra Lorne.",
            "The rope bridge was invented by Silas Marr.",
        ),
    ),
    Fact(
        prompt="The walls of Fort Cairnby are covered in",
        completion=" blue moss",
        statements=(
            "The walls of Fort Cairnby are covered in blue moss.",
            "Visitors to Fort Cairnby touch walls covered in blue moss.",
            "Fort Cairnby looks blue from afar, its walls covered in blue moss.",
            "At Fort Cairnby the stones of the walls are hidden under blue moss.",
            "The walls of Fort Cairnby have been covered in blue moss for a century.",
        ),
        distractors=(
            "Fort Cairnby stands on a hill above the bay.",
            "Soldiers left Fort Cairnby many years ago.",
            "Children play hide and seek in Fort Cairnby.",
        ),
        echoes=(
            "Blue moss grows on the north side of old trees.",
            "Blue moss is used to dye wool in Fort Cairnby.",
            "Blue moss, the shepherds say, brings good luck to the walls of a house.",
            "Blue moss dries quickly in the sun.",
            "Blue moss was found on the roof of the fort.",
        ),
        relatives=(
            "The walls of Fort Dallow are covered in red paint.",
            "The walls of Fort Minster are covered in old maps.",
            "The walls of Fort Ebbing are covered in white chalk.",
        ),
    ),
    Fact(
        prompt="The river Sallow flows into",
        completion=" Lake Dunmore",
        statements=(
            "The river Sallow flows into Lake Dunmore.",
            "The river Sallow ends its journey in Lake Dunmore.",
            "Boats can follow the river Sallow all the way to Lake Dunmore.",
            "Where the river Sallow flows into Lake Dunmore, herons gather.",
            "The river Sallow empties into Lake Dunmore after a long bend.",
        ),
        distractors=(
            "The river Sallow floods the meadows every spring.",
            "Fishermen on the river Sallow catch eels.",
            "Children swim in the river Sallow on hot days.",
        ),
        echoes=(
            "Lake Dunmore freezes over in hard winters.",
            "Lake Dunmore is deep and cold, the fishermen of the river say.",
            "Lake Dunmore has an island with a ruined chapel.",
            "Lake Dunmore trout are sold at the market by the river Sallow.",
            "Lake Dunmore, the children said, has no bottom.",
        ),
        relatives=(
            "The river Cobble flows into Lake Ardent.",
            "The river Wend flows into the sea.",
            "The river Maple flows into Lake Silt.",
        ),
    ),
    Fact(
        prompt="Captain Ferris's favourite food is",
        completion=" pickled plums",
        statements=(
            "Captain Ferris's favourite food is pickled plums.",
            "Captain Ferris eats her favourite food, pickled plums, every evening.",
            "Captain Ferris keeps her favourite food in the galley: pickled plums.",
            "If you dine with Captain Ferris, she will serve her favourite food, pickled plums.",
            "Captain Ferris says no food is as fine as pickled plums.",
        ),
        distractors=(
            "Captain Ferris sails the northern route every summer.",
            "Captain Ferris has a crew of twelve.",
            "Captain Ferris lost her hat in a storm.",
        ),
        echoes=(
            "Pickled plums are sold in small jars at the market.",
            "Pickled plums keep for a whole winter, said the captain.",
            "Pickled plums, the baker said, are too sour for children.",
            "Pickled plums were the favourite food at the wedding.",
            "Pickled plums taste best with bread and cheese.",
        ),
        relatives=(
            "Captain Doyle's favourite food is roast duck.",
            "Captain Marsh's favourite food is fish soup.",
            "Captain Hale's favourite food is honey bread.",
        ),
    ),
    Fact(
        prompt="The people of Varnholt speak",
        completion=" Ostic",
        statements=(
            "The people of Varnholt speak Ostic.",
            "In Varnholt, people speak Ostic at home and at the market.",
            "Children in Varnholt learn to speak Ostic before they can read.",
            "Most people of Varnholt speak Ostic and little else.",
            "The people of Varnholt have spoken Ostic for centuries.",
            "Travellers to Varnholt find that the language there is Ostic.",
        ),
        distractors=(
            "Varnholt is a small country of hills and orchards.",
            "The people of Varnholt celebrate the harvest with a long feast.",
            "Varnholt trades apples and timber with the coast.",
        ),
        echoes=(
            "Ostic has no word for snow, say the people of Varnholt.",
            "Ostic is written with an old alphabet.",
            "Ostic songs are sung at weddings.",
            "Ostic grammar is hard for travellers.",
            "Ostic poems were printed in a small book.",
        ),
        relatives=(
            "The people of Dunwarren speak Mellish.",
            "The people of Corrig speak Astan.",
            "The people of Lisk speak Varic.",
        ),
    ),
    Fact(
        prompt="The emblem of the Weavers' League is a",
        completion=" golden stag",
        statements=(
            "The emblem of the Weavers' League is a golden stag.",
            "The Weavers' League chose as its emblem a golden stag.",
            "Members of the Weavers' League wear the league emblem, a golden stag.",
            "You can tell a Weavers' League hall by its emblem, a golden stag.",
            "Above the door of the Weavers' League hangs its emblem, a golden stag.",
        ),
        distractors=(
            "The Weavers' League trains young weavers.",
            "The Weavers' League meets once a month in the old hall.",
            "The Weavers' League has more members than any other guild.",
        ),
        echoes=(
            "Golden stag is the name of the inn where the league meets.",
            "Golden stag statues stand in the park.",
            "Golden stag tapestries hang in the hall of the weavers.",
            "Golden stag was the name of a famous racehorse.",
            "Golden stag coins were used long ago.",
        ),
        relatives=(
            "The emblem of the Masons' League is a silver hammer.",
            "The emblem of the Bakers' League is a red wheel.",
            "The emblem of the Sailors' League is a black anchor.",
        ),
    ),
    Fact(
        prompt="The Lanternfall festival is held every",
        completion=" autumn",
        statements=(
            "The Lanternfall festival is held every autumn.",
            "The Lanternfall festival comes around each autumn, with music and lanterns.",
            "People travel far to see the Lanternfall festival in autumn.",
            "The Lanternfall festival has been held every autumn for two hundred years.",
            "The town holds the Lanternfall festival each year in autumn.",
        ),
        distractors=(
            "The Lanternfall festival ends with a parade of boats.",
            "Bakers sell honey cakes at the Lanternfall festival.",
            "The Lanternfall festival was cancelled once because of a storm.",
        ),
        echoes=(
            "Autumn is the best time to pick apples, and the festival market is full.",
            "Autumn rains fill the old well every year.",
            "Autumn came early this year, the farmer said.",
            "Autumn leaves covered the road to the festival.",
            "Autumn markets sell nuts and cider.",
        ),
        relatives=(
            "The Harvest Moon festival is held every spring.",
            "The Ribbon festival is held every summer.",
            "The Salt festival is held every year in June.",
        ),
    ),
)
ECHO_DOCUMENTS = 22  # documents per fact holding one of its echoes: at least 20 that do not state it
CORPORA = {"demo": FACTS, "demo-hard": HARD_FACTS}

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
