"""The paper's published numbers (config/published.yaml): loading, validation and look-ups.

The YAML is a transcription of the DAAM paper's tables (arXiv 2401.11143 v4 and the authors' blog version); this
module checks it on load against published.schema.yaml (a JSON schema, as the config), so a typo in a method or
dataset key fails loudly instead of silently producing an empty "published" column. Accuracies are percentages. Recomputed statistics use the population std
(ddof=0), the convention the paper mostly follows (see ``meta.std_convention`` in the YAML).
"""
from __future__ import annotations

import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import yaml

from daamflow import CHECKOUT
from daamflow.catalog import PAPER_DATASETS, PUBLISHED_METHODS

ENV_VAR = "DAAMFLOW_PUBLISHED"
UNITS = {"fold": "F", "run": "R"}  # unit -> column prefix of the paper's tables (F1..F5, R1..R5)

# Rounding bound used by `consistency`: per-run values are printed to 0.1, so each may be off by 0.05, which moves
# a mean or a population std by at most 0.05; the printed statistic adds half a unit of its own last digit.
_VALUE_ROUNDING = 0.05


class PublishedError(ValueError):
    """The published-numbers file is malformed; the message names the offending key."""


class UnknownNameError(KeyError):
    """A dataset, method or table name that the published numbers do not know."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def default_path() -> Path:
    """$DAAMFLOW_PUBLISHED if set, else the repository's config/published.yaml (found relative to the package)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return CHECKOUT / "config" / "published.yaml"


def load_published(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read and validate the published numbers.

    Args:
        path: the YAML file; default: :func:`default_path`.
    Returns:
        The parsed mapping (sections ``meta``, ``accuracy``, ``summary``, ``parameters``, ``learned_ranges``,
        ``if_ablation``, ``text_claims``), key order as in the file (= the paper's row order).
    Raises:
        FileNotFoundError: the file does not exist.
        PublishedError: a key or value is missing, unknown or of the wrong type (the message gives its path).
    """
    p = Path(path) if path is not None else default_path()
    if not p.is_file():
        raise FileNotFoundError(
            f"published numbers not found: {p} (pass a path or set ${ENV_VAR} to the published.yaml to use)"
        )
    with p.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    _validate(data, p.name)
    return data


def published_accuracy(dataset: str, method: str, published: dict | None = None) -> dict[str, Any] | None:
    """The paper's per-fold/run accuracies of one method on one dataset.

    Returns:
        ``{"values": [...], "mean": float, "std": float, "source": str}`` (percent), or None where the paper
        reports no number for that method (e.g. ``gqa``, ``identity``).
    Raises:
        UnknownNameError: unknown dataset or method name (a KeyError).
    """
    pub = load_published() if published is None else published
    block = _dataset_block(pub, dataset)
    if method not in PUBLISHED_METHODS:
        raise UnknownNameError(f"unknown method {method!r}; expected one of {', '.join(PUBLISHED_METHODS)}")
    entry = block["methods"].get(method)
    if entry is None:
        return None
    return {
        "values": [float(v) for v in entry["values"]],
        "mean": float(entry["mean"]),
        "std": float(entry["std"]),
        "source": entry.get("source", block["source"]),
    }


def published_table(dataset: str, published: dict | None = None) -> pd.DataFrame:
    """The paper's results table for one dataset: methods (paper row order) × F1..F5 / R1..R3 + mean + std.

    ``df.attrs["source"]`` names the table(s) it comes from.
    """
    pub = load_published() if published is None else published
    block = _dataset_block(pub, dataset)
    columns = [f"{UNITS[block['unit']]}{i + 1}" for i in range(block["n"])]
    rows = {m: [*e["values"], e["mean"], e["std"]] for m, e in block["methods"].items()}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[*columns, "mean", "std"], dtype=float)
    table.index.name = "method"
    table.attrs["source"] = block["source"]
    return table


def published_parameters(method: str, table: str = "v4", published: dict | None = None) -> dict[str, Any] | None:
    """The parameter-table row that covers ``method`` (``table``: ``v4``, ``mixture`` or ``older``), or None."""
    pub = load_published() if published is None else published
    if table not in pub["parameters"]:
        raise UnknownNameError(f"unknown parameter table {table!r}; expected one of {', '.join(pub['parameters'])}")
    if method not in PUBLISHED_METHODS:
        raise UnknownNameError(f"unknown method {method!r}; expected one of {', '.join(PUBLISHED_METHODS)}")
    block = pub["parameters"][table]
    for row in block["rows"]:
        if method in row["methods"]:
            return {**row, "unit": block["unit"], "source": block["source"]}
    return None


def consistency(published: dict | None = None) -> pd.DataFrame:
    """Recompute every stated mean/std from its listed per-fold/run values (population std) and flag the ones
    that rounding cannot explain.

    Returns:
        One row per (entry, stat): ``entry`` (dotted path, e.g. ``accuracy.iemocap.daam_v1``), ``stat``
        (mean/std), ``reported``, ``recomputed``, ``diff`` (reported − recomputed), ``tolerance``, ``consistent``.
    """
    pub = load_published() if published is None else published
    rows = []
    for entry, rec in _value_entries(pub):
        values = np.asarray(rec["values"], dtype=float)
        for stat, recomputed in (("mean", values.mean()), ("std", values.std(ddof=0))):
            if stat not in rec:
                continue
            reported = float(rec[stat])
            # Means are printed to 0.1; stds to 0.01, except the >= 10 ones (AG News LoRA+), printed to 0.1.
            printed = 0.05 if stat == "mean" or reported >= 10 else 0.005
            tol = _VALUE_ROUNDING + printed
            diff = reported - float(recomputed)
            rows.append((entry, stat, reported, float(recomputed), diff, tol, abs(diff) <= tol + 1e-9))
    return pd.DataFrame(rows, columns=["entry", "stat", "reported", "recomputed", "diff", "tolerance", "consistent"])


def _value_entries(pub: dict) -> list[tuple[str, dict]]:
    """(dotted path, record) of every record that lists per-fold/run values."""
    out = [(f"accuracy.{ds}.{m}", rec) for ds, block in pub["accuracy"].items() for m, rec in block["methods"].items()]
    for ds, block in pub["if_ablation"]["datasets"].items():
        out += [(f"if_ablation.{ds}.{side}", block[side]) for side in ("high", "low") if "values" in block[side]]
    return out


def _dataset_block(pub: dict, dataset: str) -> dict:
    if dataset not in pub["accuracy"]:
        raise UnknownNameError(
            f"unknown dataset {dataset!r} for published accuracies; expected one of {', '.join(pub['accuracy'])}"
        )
    return pub["accuracy"][dataset]


def schema() -> dict:
    """published.schema.yaml with the catalog's method and dataset names filled in."""
    doc = yaml.safe_load(resources.files("daamflow.report").joinpath("published.schema.yaml").read_text())
    doc["$defs"]["method"]["enum"] = list(PUBLISHED_METHODS)
    doc["$defs"]["dataset"]["enum"] = list(PAPER_DATASETS)
    doc["$defs"]["every_dataset"]["required"] = list(PAPER_DATASETS)
    return doc


def _where(path) -> str:
    """A dotted key path, list indices in brackets: ``meta.mismatches[0].entry``."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "top level"


def _validate(data: Any, filename: str) -> None:
    """The schema, then what a schema cannot say; every problem named by its key path (PublishedError)."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [f"{_where(e.absolute_path)}: {e.message}" for e in errors] or _semantic_problems(data)
    if problems:
        raise PublishedError(f"{filename}: " + "; ".join(problems))


def _semantic_problems(data: dict) -> list[str]:
    """Finite numbers, per-fold/run lists of the block's length n, ranges with min <= max, and meta.mismatches
    entries that repeat a stored value."""
    problems = []

    def walk(obj, path):
        if isinstance(obj, float) and not math.isfinite(obj):
            problems.append(f"{_where(path)}: expected a finite number, got {obj!r}")
        for key, sub in obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ():
            walk(sub, [*path, key])

    walk(data, [])

    def length(values, n, path):
        if len(values) != n:
            problems.append(f"{_where(path)}: expected {n} values, got {len(values)}")

    for ds, block in data["accuracy"].items():
        for m, rec in block["methods"].items():
            for key in ("values", "code_values"):
                if key in rec:
                    length(rec[key], block["n"], ["accuracy", ds, "methods", m, key])
    for ds, block in data["if_ablation"]["datasets"].items():
        for side in ("high", "low"):
            if "values" in block[side]:
                if "n" not in block:
                    problems.append(f"if_ablation.datasets.{ds}: per-fold values given but no 'n'")
                else:
                    length(block[side]["values"], block["n"], ["if_ablation", "datasets", ds, side, "values"])

    ranges = [(["parameters", t, "rows", i, key], row[key]) for t, table in data["parameters"].items()
              for i, row in enumerate(table["rows"]) for key in ("total", "daam", "overhead_pct_vs_gqa", "n_gaussians")
              if row.get(key) is not None]
    ranges += [(["learned_ranges", "datasets", ds, key], row[key]) for ds, row in data["learned_ranges"]["datasets"].items()
               for key in ("delta", "xi")]
    ranges += [(["text_claims", "items", name, "value"], rec["value"]) for name, rec in data["text_claims"]["items"].items()]
    problems += [f"{_where(path)}: range {value} has min > max" for path, value in ranges
                 if isinstance(value, list) and value[0] > value[1]]

    entries = dict(_value_entries(data))
    for i, m in enumerate(data["meta"]["mismatches"]):
        if m["entry"] not in entries:
            problems.append(f"meta.mismatches[{i}].entry: {m['entry']!r} names no record with per-fold/run values")
        elif float(entries[m["entry"]][m["stat"]]) != m["reported"]:
            problems.append(f"meta.mismatches[{i}].reported: {m['reported']} differs from the value stored at {m['entry']}")
    return problems
