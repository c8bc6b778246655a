"""The paper's published numbers (config/published.yaml): loading, validation and side-by-side comparison.

The YAML is a transcription of the DAAM paper's tables (arXiv 2401.11143 v4 and the authors' blog version); this
module checks its structure on load, so a typo in a method or dataset key fails loudly instead of silently
producing an empty "published" column. Accuracies are percentages. Recomputed statistics use the population std
(ddof=0), the convention the paper mostly follows (see ``meta.std_convention`` in the YAML).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from daamflow import CHECKOUT

ENV_VAR = "DAAMFLOW_PUBLISHED"
# Registry names (docs/paper-notes.md#16-method-definitions). Kept here rather than imported from the model registry so that reading the
# published numbers never imports torch.
METHODS = (
    "daam_v1", "daam_v2", "mixture", "gqdaam", "gqa", "mha", "mha_bn", "identity", "weighted_sum", "linear",
    "lora_r4", "lora_r8", "loraplus_r4", "loraplus_r8",
)
DATASETS = ("iemocap", "cifar100", "agnews")
UNITS = {"fold": "F", "run": "R"}  # unit -> column prefix of the paper's tables (F1..F5, R1..R5)
SECTIONS = ("meta", "accuracy", "summary", "parameters", "learned_ranges", "if_ablation", "text_claims")
TEXT_CLAIM_UNITS = ("times", "percent")
TEXT_CLAIM_RELATIONS = ("at_least", "at_most")

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
    _Validator(p.name).check(data)
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
    if method not in METHODS:
        raise UnknownNameError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
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


def compare(ours: pd.DataFrame, dataset: str, published: dict | None = None) -> pd.DataFrame:
    """Our mean/std beside the paper's, with Δ = ours − published.

    Args:
        ours: index = method name, columns ``mean`` and ``std`` (percent, as the paper).
        dataset: ``iemocap``, ``cifar100`` or ``agnews``.
    Returns:
        One row per method of ``ours`` (same order), columns ``ours_mean``, ``ours_std``, ``published_mean``,
        ``published_std``, ``delta_mean``, ``delta_std``; NaN published (and Δ) where the paper has no number.
    """
    pub = load_published() if published is None else published
    block = _dataset_block(pub, dataset)
    missing = {"mean", "std"} - set(ours.columns)
    if missing:
        raise ValueError(f"ours lacks column(s) {sorted(missing)}; expected index = method, columns mean and std")
    if not ours.index.is_unique:
        dup = sorted(set(ours.index[ours.index.duplicated()]))
        raise ValueError(f"ours has duplicate methods {dup}; aggregate folds/runs to one row per method first")
    means = pd.to_numeric(ours["mean"], errors="raise").astype(float)
    finite = means[np.isfinite(means)]
    if len(finite) and (finite.abs() <= 1.0).all():
        raise ValueError(
            f"ours means are all within [-1, 1] ({finite.round(4).to_dict()}): they look like fractions, "
            "but the paper reports percent; multiply by 100"
        )
    nan = float("nan")
    pub_mean = [block["methods"][m]["mean"] if m in block["methods"] else nan for m in ours.index]
    pub_std = [block["methods"][m]["std"] if m in block["methods"] else nan for m in ours.index]
    out = pd.DataFrame(
        {
            "ours_mean": means.to_numpy(),
            "ours_std": pd.to_numeric(ours["std"], errors="raise").astype(float).to_numpy(),
            "published_mean": np.asarray(pub_mean, dtype=float),
            "published_std": np.asarray(pub_std, dtype=float),
        },
        index=pd.Index(ours.index, name="method"),
    )
    out["delta_mean"] = out["ours_mean"] - out["published_mean"]
    out["delta_std"] = out["ours_std"] - out["published_std"]
    out.attrs["source"] = block["source"]
    return out


def published_parameters(method: str, table: str = "v4", published: dict | None = None) -> dict[str, Any] | None:
    """The parameter-table row that covers ``method`` (``table``: ``v4``, ``mixture`` or ``older``), or None."""
    pub = load_published() if published is None else published
    if table not in pub["parameters"]:
        raise UnknownNameError(f"unknown parameter table {table!r}; expected one of {', '.join(pub['parameters'])}")
    if method not in METHODS:
        raise UnknownNameError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
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


class _Validator:
    """Structural checks with error messages that give the dotted path of the bad key."""

    def __init__(self, filename: str):
        self.filename = filename

    def fail(self, where: str, msg: str) -> None:
        raise PublishedError(f"{self.filename}: {where}: {msg}")

    def mapping(self, obj: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict:
        if not isinstance(obj, dict):
            self.fail(where, f"expected a mapping, got {type(obj).__name__}")
        missing = required - obj.keys()
        if missing:
            self.fail(where, f"missing key(s) {sorted(missing)}")
        unknown = obj.keys() - required - optional
        if unknown:
            self.fail(where, f"unknown key(s) {sorted(map(str, unknown))}; allowed: {sorted(required | optional)}")
        return obj

    def number(self, obj: Any, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
            self.fail(where, f"expected a finite number, got {obj!r}")
        if not lo <= obj <= hi:
            self.fail(where, f"{obj} outside [{lo}, {hi}]")
        return float(obj)

    def text(self, obj: Any, where: str) -> str:
        if not isinstance(obj, str) or not obj.strip():
            self.fail(where, f"expected a non-empty string, got {obj!r}")
        return obj

    def numbers(self, obj: Any, where: str, n: int | None = None, lo: float = -math.inf, hi: float = math.inf):
        if not isinstance(obj, list):
            self.fail(where, f"expected a list of numbers, got {type(obj).__name__}")
        if n is not None and len(obj) != n:
            self.fail(where, f"expected {n} values, got {len(obj)}")
        for i, v in enumerate(obj):
            self.number(v, f"{where}[{i}]", lo, hi)

    def range_(self, obj: Any, where: str) -> None:
        """A [min, max] pair or a single number."""
        if isinstance(obj, list):
            self.numbers(obj, where, 2)
            if obj[0] > obj[1]:
                self.fail(where, f"range {obj} has min > max")
        else:
            self.number(obj, where)

    def method(self, name: Any, where: str) -> None:
        if name not in METHODS:
            self.fail(where, f"unknown method {name!r}; expected one of {', '.join(METHODS)}")

    def dataset(self, name: Any, where: str) -> None:
        if name not in DATASETS:
            self.fail(where, f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")

    def check(self, data: Any) -> None:
        self.mapping(data, "top level", set(SECTIONS))
        self.check_accuracy(data["accuracy"])
        self.check_if_ablation(data["if_ablation"])
        self.check_meta(data["meta"], data)  # after the sections its mismatch entries point into
        self.check_summary(data["summary"])
        self.check_parameters(data["parameters"])
        self.check_learned_ranges(data["learned_ranges"])
        self.check_text_claims(data["text_claims"])

    def check_meta(self, meta: Any, data: dict) -> None:
        self.mapping(
            meta, "meta", {"arxiv", "version", "unit", "std_convention", "mismatches"},
            {"paper", "blog", "code", "transcribed_from", "table_numbering", "borderline"},
        )
        if meta["unit"] != "percent":
            self.fail("meta.unit", f"expected 'percent', got {meta['unit']!r}")
        if not isinstance(meta["mismatches"], list):
            self.fail("meta.mismatches", "expected a list")
        entries = dict(_value_entries(data))
        for i, m in enumerate(meta["mismatches"]):
            where = f"meta.mismatches[{i}]"
            self.mapping(m, where, {"entry", "stat", "reported", "recomputed"}, {"note"})
            if m["entry"] not in entries:
                self.fail(f"{where}.entry", f"{m['entry']!r} names no record with per-fold/run values")
            if m["stat"] not in ("mean", "std"):
                self.fail(f"{where}.stat", f"expected 'mean' or 'std', got {m['stat']!r}")
            if float(entries[m["entry"]][m["stat"]]) != self.number(m["reported"], f"{where}.reported"):
                self.fail(f"{where}.reported", f"{m['reported']} differs from the value stored at {m['entry']}")
            self.number(m["recomputed"], f"{where}.recomputed")

    def check_accuracy(self, acc: Any) -> None:
        self.mapping(acc, "accuracy", set(DATASETS))
        for ds, block in acc.items():
            where = f"accuracy.{ds}"
            self.mapping(block, where, {"source", "unit", "n", "methods"}, {"encoder", "note"})
            self.text(block["source"], f"{where}.source")
            if block["unit"] not in UNITS:
                self.fail(f"{where}.unit", f"expected one of {sorted(UNITS)}, got {block['unit']!r}")
            n = block["n"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                self.fail(f"{where}.n", f"expected a positive integer, got {n!r}")
            methods = block["methods"]
            if not isinstance(methods, dict) or not methods:
                self.fail(f"{where}.methods", "expected a non-empty mapping method -> record")
            for m, rec in methods.items():
                self.method(m, f"{where}.methods")
                self.check_record(rec, f"{where}.methods.{m}", n)

    def check_record(self, rec: Any, where: str, n: int) -> None:
        self.mapping(rec, where, {"values", "mean", "std"}, {"source", "note", "code_values"})
        self.numbers(rec["values"], f"{where}.values", n, 0, 100)
        self.number(rec["mean"], f"{where}.mean", 0, 100)
        self.number(rec["std"], f"{where}.std", 0, 100)
        if "code_values" in rec:
            self.numbers(rec["code_values"], f"{where}.code_values", n, 0, 100)

    def check_summary(self, summary: Any) -> None:
        self.mapping(summary, "summary", {"source", "datasets"}, {"note"})
        fields = {"modality", "mha", "best_lora", "best_lora_method", "best_daam", "best_daam_method",
                  "delta_vs_mha", "delta_vs_lora"}
        for ds, row in self.mapping(summary["datasets"], "summary.datasets", set(DATASETS)).items():
            where = f"summary.datasets.{ds}"
            self.mapping(row, where, fields)
            for key in ("mha", "best_lora", "best_daam", "delta_vs_mha", "delta_vs_lora"):
                self.number(row[key], f"{where}.{key}", -100, 100)
            self.method(row["best_lora_method"], f"{where}.best_lora_method")
            self.method(row["best_daam_method"], f"{where}.best_daam_method")

    def check_parameters(self, params: Any) -> None:
        self.mapping(params, "parameters", {"v4", "mixture", "older"})
        for name, block in params.items():
            where = f"parameters.{name}"
            self.mapping(block, where, {"source", "unit", "rows"}, {"note"})
            if block["unit"] not in ("millions", "parameters"):
                self.fail(f"{where}.unit", f"expected 'millions' or 'parameters', got {block['unit']!r}")
            if not isinstance(block["rows"], list) or not block["rows"]:
                self.fail(f"{where}.rows", "expected a non-empty list")
            for i, row in enumerate(block["rows"]):
                rw = f"{where}.rows[{i}]"
                self.mapping(row, rw, {"label", "methods", "total"},
                             {"heads", "n_gaussians", "daam", "note", "overhead_pct_vs_gqa", "overhead_note"})
                if not isinstance(row["methods"], list):
                    self.fail(f"{rw}.methods", "expected a list of method names (may be empty)")
                for m in row["methods"]:
                    self.method(m, f"{rw}.methods")
                for key in ("total", "daam", "overhead_pct_vs_gqa"):
                    if key in row:
                        self.range_(row[key], f"{rw}.{key}")
                if row.get("n_gaussians") is not None:
                    self.range_(row["n_gaussians"], f"{rw}.n_gaussians")

    def check_learned_ranges(self, lr: Any) -> None:
        self.mapping(lr, "learned_ranges", {"source", "datasets"}, {"note"})
        for ds, row in self.mapping(lr["datasets"], "learned_ranges.datasets", set(DATASETS)).items():
            where = f"learned_ranges.datasets.{ds}"
            self.mapping(row, where, {"delta", "xi"}, {"modality", "variability"})
            self.numbers(row["delta"], f"{where}.delta", 2)
            self.numbers(row["xi"], f"{where}.xi", 2)
            for key in ("delta", "xi"):
                self.range_(row[key], f"{where}.{key}")

    def check_if_ablation(self, ifa: Any) -> None:
        self.mapping(ifa, "if_ablation", {"source", "datasets"}, {"layer_numbering", "note"})
        for ds, block in self.mapping(ifa["datasets"], "if_ablation.datasets", set(DATASETS)).items():
            where = f"if_ablation.datasets.{ds}"
            self.mapping(block, where, {"high", "low", "difference"}, {"unit", "n", "note"})
            self.number(block["difference"], f"{where}.difference", -100, 100)
            for side in ("high", "low"):
                sw = f"{where}.{side}"
                rec = self.mapping(block[side], sw, {"layers", "mean"}, {"values", "std"})
                layers = rec["layers"]
                if not isinstance(layers, list) or not layers or not all(
                    isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in layers
                ):
                    self.fail(f"{sw}.layers", f"expected a non-empty list of 1-based layer numbers, got {layers!r}")
                self.number(rec["mean"], f"{sw}.mean", 0, 100)
                if "values" in rec:
                    if "n" not in block:
                        self.fail(where, "per-fold values given but no 'n'")
                    self.numbers(rec["values"], f"{sw}.values", block["n"], 0, 100)
                if "std" in rec:
                    self.number(rec["std"], f"{sw}.std", 0, 100)

    def check_text_claims(self, tc: Any) -> None:
        self.mapping(tc, "text_claims", {"source", "items"}, {"note"})
        items = tc["items"]
        if not isinstance(items, dict) or not items:
            self.fail("text_claims.items", "expected a non-empty mapping claim id -> record")
        for name, rec in items.items():
            where = f"text_claims.items.{name}"
            self.mapping(rec, where, {"value", "unit", "relation", "source", "quote"})
            self.range_(rec["value"], f"{where}.value")
            if rec["unit"] not in TEXT_CLAIM_UNITS:
                self.fail(f"{where}.unit", f"expected one of {TEXT_CLAIM_UNITS}, got {rec['unit']!r}")
            if rec["relation"] not in TEXT_CLAIM_RELATIONS:
                self.fail(f"{where}.relation", f"expected one of {TEXT_CLAIM_RELATIONS}, got {rec['relation']!r}")
            self.text(rec["quote"], f"{where}.quote")
