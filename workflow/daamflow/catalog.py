"""Every name of daamflow's domain, defined once: methods and their families, protocols, layer selections, dataset
sources and their modality, and the ``base@variant`` grammar of run labels.

Torch-free and dependency-free: the Snakefile, the config validation, the report and the analyses import it while the
DAG is built. The paper's side of these names (what each method is) is in docs/paper-notes.md#16-method-definitions.
"""
from __future__ import annotations

import re

# ---- methods --------------------------------------------------------------------------------------------------------

# heads trained on the cached features (rule train), in the report's column order: baselines first, DAAM last
HEADS = ("linear", "weighted_sum", "identity", "mha", "mha_bn", "gqa", "gqdaam", "daam_v2", "daam_v1", "mixture")
# the released code's MHA as heads of their own, for the quirk table: the released IEMOCAP MHA (one layer, attention
# across the mini-batch, 1-channel conv head), and our `mha` with only the across-batch quirk switched on
ACROSS_BATCH = "across_batch"
QUIRK_HEADS = ("mha@released", "mha@" + ACROSS_BATCH)
HEAD_METHODS = HEADS + QUIRK_HEADS
# LoRA / LoRA+ fine-tune the encoder itself (rule finetune); any rank r >= 1, optionally with the released quirks
LORA_PATTERN = r"(lora|loraplus)_r[1-9][0-9]*(@released)?"
LORA_METHODS = ("lora_r4", "lora_r8", "loraplus_r4", "loraplus_r8")  # the paper's four
# the order of the report's columns and rows
METHOD_ORDER = HEADS + LORA_METHODS
# the methods the paper's tables name (config/published.yaml is checked against these)
PUBLISHED_METHODS = HEADS + LORA_METHODS

# families
DAAM_FAMILY = ("daam_v1", "daam_v2", "mixture", "gqdaam")  # every DAAM variant: compared against every baseline
MAIN_DAAM = ("daam_v1", "daam_v2", "gqdaam")  # the main-table variants the paper's "best DAAM" is chosen from
LEARNED_GAUSSIANS = ("daam_v1", "daam_v2", "gqdaam")  # methods with learned δ/ξ per head and feature
BEST_LORA = ("lora_r4", "lora_r8")  # the paper's "best LoRA" excludes LoRA+

# ---- protocols, layer selections ------------------------------------------------------------------------------------

PROTOCOLS = ("paper", "clean")  # paper: the test part also selects; clean: a dev split selects (docs/paper-notes.md#66-paper-and-clean-protocols)
SELECTION_PART = {"paper": "test", "clean": "dev"}
SELECTIONS = ("high", "low", "random")  # the IF-driven layer ablations: <method>@<selection>
IF_SOURCES = ("selected", "all_epochs")

# ---- dataset sources ------------------------------------------------------------------------------------------------

# None: the user's own data, whose modality is declared in the config or inferred from the data
SOURCE_MODALITY = {
    "wordnet": "text", "fashion_mnist": "image", "espeak_prosody": "audio",
    "iemocap": "audio", "cifar100": "image", "agnews": "text", "table": None, "folder": None,
}
MODALITIES = ("audio", "image", "text")
PAPER_DATASETS = ("iemocap", "cifar100", "agnews")

# ---- run labels: base@variant ---------------------------------------------------------------------------------------

RELEASED = "released"


def base(label: str) -> str:
    """``daam_v1@high`` → ``daam_v1``; a plain method name is its own base."""
    return label.split("@", 1)[0]


def variant(label: str) -> str:
    """``daam_v1@high`` → ``high``; ``""`` for a plain method name."""
    return label.partition("@")[2]


def label(method: str, variant_: str) -> str:
    return f"{method}@{variant_}" if variant_ else method


def is_head(method: str) -> bool:
    return method in HEAD_METHODS


def is_lora(method: str) -> bool:
    return re.fullmatch(LORA_PATTERN, method) is not None


def order(methods) -> list[str]:
    """``methods`` in the report's order: the catalog's methods in its order, then the others (variants
    ``base@variant`` included) alphabetically."""
    known = [m for m in METHOD_ORDER if m in set(methods)]
    return known + sorted(set(methods) - set(known))


# ---- the `DATASET=PAPER_DATASET` pairs the rules hand to the report ---------------------------------------------------

def format_pairs(paper_of: dict[str, str]) -> list[str]:
    """``{"wordnet": "agnews"}`` → ``["wordnet=agnews"]`` (command-line arguments; ``parse_pairs`` reads them)."""
    return [f"{dataset}={paper}" for dataset, paper in paper_of.items()]


def parse_pairs(items: list[str] | None, what: str = "--paper-datasets") -> dict[str, str]:
    """``["wordnet=agnews", ...]`` → ``{"wordnet": "agnews"}``; a clear error naming a malformed item."""
    out = {}
    for item in items or []:
        if not re.fullmatch(r"[^=\s]+=[^=\s]+", item):
            raise ValueError(f"{what}: expected DATASET=PAPER_DATASET, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out
