"""WordNet noun glosses labelled by lexicographer category (Debian ``wordnet-base``): the offline text stand-in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from daamflow.data.manifest import sha256_file

DEFAULT_PATH = Path("/usr/share/wordnet/data.noun")
OPTIONS = {
    "categories": ["noun.animal", "noun.plant", "noun.food", "noun.artifact"],
    "per_class": 100,
    "min_chars": 20,
    "path": str(DEFAULT_PATH),
}
# WordNet 3.0 lexicographer files that hold nouns (the number is field 2 of a data.noun line)
NOUN_CATEGORIES = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute", 8: "noun.body",
    9: "noun.cognition", 10: "noun.communication", 11: "noun.event", 12: "noun.feeling", 13: "noun.food",
    14: "noun.group", 15: "noun.location", 16: "noun.motive", 17: "noun.object", 18: "noun.person",
    19: "noun.phenomenon", 20: "noun.plant", 21: "noun.possession", 22: "noun.process", 23: "noun.quantity",
    24: "noun.relation", 25: "noun.shape", 26: "noun.state", 27: "noun.substance", 28: "noun.time",
}


def read_glosses(path: Path | str = DEFAULT_PATH) -> pd.DataFrame:
    """Parse a WordNet ``data.noun`` file into columns offset (str), category (name), gloss (text after ``|``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"WordNet data file not found: {path}. Install Debian 'wordnet-base' (apt-get install wordnet-base) "
            f"or pass path= to a WordNet 3.0 data.noun file."
        )
    rows = []
    with open(path, encoding="latin-1") as fh:  # WordNet 3.0 files are Latin-1
        for line in fh:
            if line.startswith("  "):  # licence header
                continue
            head, sep, gloss = line.partition(" | ")
            fields = head.split(" ", 2)
            if not sep or len(fields) < 3 or not fields[1].isdigit():
                raise ValueError(f"{path}: not a WordNet data.noun line: {line[:80]!r}")
            rows.append((fields[0], NOUN_CATEGORIES.get(int(fields[1]), f"lex{fields[1]}"), " ".join(gloss.split())))
    return pd.DataFrame(rows, columns=["offset", "category", "gloss"])


def build(work_dir: Path, seed: int, categories: list[str], per_class: int, min_chars: int, path: str):
    """Sample ``per_class`` glosses of at least ``min_chars`` characters from each category (seeded).

    Returns (manifest rows, class names, versions); nothing besides the manifest is written to ``work_dir``.
    """
    unknown = [c for c in categories if c not in NOUN_CATEGORIES.values()]
    if unknown or not categories:
        raise ValueError(f"wordnet: unknown categories {unknown}; accepted: {sorted(NOUN_CATEGORIES.values())}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"wordnet: categories must be distinct, got {categories}")
    if per_class < 1:
        raise ValueError(f"wordnet: per_class must be >= 1, got {per_class}")
    glosses = read_glosses(path)
    rng = np.random.default_rng(seed)
    parts = []
    for label, name in enumerate(categories):
        pool = glosses[(glosses["category"] == name) & (glosses["gloss"].str.len() >= min_chars)]
        if len(pool) < per_class:
            raise ValueError(
                f"wordnet: category {name} has only {len(pool)} glosses of >= {min_chars} chars; "
                f"lower per_class={per_class}"
            )
        picked = pool.iloc[np.sort(rng.choice(len(pool), size=per_class, replace=False))]
        parts.append(pd.DataFrame({
            "id": "wn-" + picked["offset"].to_numpy(dtype=object),
            "label": label,
            "label_name": name,
            "text": picked["gloss"].to_numpy(),
        }))
    df = pd.concat(parts, ignore_index=True)
    df["group"] = df["id"]  # glosses have no natural groups
    df["split"] = ""
    versions = {"wordnet_data_noun": {"path": str(path), "sha256": sha256_file(path)}}
    return df, list(categories), versions
