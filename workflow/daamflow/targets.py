"""Output paths of the workflow, each written once: the templates the rules' outputs, logs and benchmarks are made of,
and the target lists built from the same templates (docs/architecture.md#1-data-flow).

A template's ``{fields}`` are Snakemake wildcards: :func:`path` fills in those it is given and leaves the others, so a
rule and a target list format the same string.
"""
from __future__ import annotations

import os

from daamflow import catalog

MANIFEST = "{R}/data/{dataset}/manifest.csv"
META = "{R}/data/{dataset}/meta.json"
ENCODER_SPEC = "{R}/encoders/{encoder}/encoder.json"
FEATURES = "{R}/features/{dataset}/{encoder}/{file}"
FEATURE_FILES = ("features.npy", "index.csv", "manifest.json")
RUN_TABLE = "{R}/runs/{dataset}/{encoder}/{protocol}/{method}/runs.csv"
IMPORTANCE = "{R}/importance/{dataset}/{protocol}/{file}"  # per_layer.csv, layers.json, layers_<source>.json
PROBE = "{R}/probes/{dataset}/{protocol}/probe.csv"
VQVAE_METRICS = "{R}/vqvae/{variant}/seed{seed}/metrics.json"
VQVAE_GRID = "{R}/vqvae/{variant}/seed{seed}/reconstructions.png"
SUBMITIT_LOGS = "{R}/logs/submitit"
LOG = "{R}/logs/{stage}/{name}.log"
BENCHMARK = "{R}/benchmarks/{stage}/{name}.tsv"

# tables: a *_TABLE is a stem, written as csv, md and tex (table_files); the others are single files
TABLES = "{R}/tables"
PROTOCOL_TABLE = TABLES + "/{dataset}_{protocol}"
PROTOCOLS_TABLE = TABLES + "/{dataset}_protocols"
ABLATION_TABLE = TABLES + "/{dataset}_ablation"
IF_PROBE_TABLE = TABLES + "/{dataset}_{protocol}_if_probe"
VS_PAPER_TABLE = TABLES + "/{dataset}_{protocol}_vs_paper"
LEARNED_TABLE = TABLES + "/learned_parameters"
PAPER_SUMMARY_TABLE = TABLES + "/paper_summary"
PARAMETERS_TABLE = TABLES + "/parameters"
CLAIMS_TABLE = TABLES + "/claims"
CLAIMS_JSON = TABLES + "/claims.json"
PAIRED_TABLE = TABLES + "/paired"
QUIRKS_TABLE = TABLES + "/quirks"
SUMMARY_MD = TABLES + "/summary.md"
SUMMARY_JSON = TABLES + "/summary.json"
VQVAE_CSV = TABLES + "/vqvae.csv"
VQVAE_MD = TABLES + "/vqvae.md"
HISTORY_CURVE = TABLES + "/curves/history/{dataset}_{protocol}_{method}.csv"
LAYER_CURVE = TABLES + "/curves/layers/{dataset}_{protocol}.csv"

# figures
ACCURACY_FIGURE = "{R}/figures/{dataset}_accuracy.png"
IF_HEATMAP = "{R}/figures/{dataset}_{protocol}_if_heatmap.png"
IF_LAYERS = "{R}/figures/{dataset}_{protocol}_if_layers.png"
IF_PROBE_FIGURE = "{R}/figures/{dataset}_{protocol}_if_probe.png"
VQVAE_FIGURE = "{R}/figures/vqvae_reconstructions.png"


class _Wildcards(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def path(template: str, config: dict, **fields) -> str:
    """``template`` with the results folder and ``fields`` filled in; a field not given stays a ``{wildcard}``."""
    return template.format_map(_Wildcards(R=config["results_dir"], **fields))


TABLE_FORMATS = ("csv", "md", "tex")


def table_files(template: str, config: dict, **fields) -> list[str]:
    """The csv, md and tex files of one table stem."""
    base = path(template, config, **fields)
    return [f"{base}.{ext}" for ext in TABLE_FORMATS]


def stem(table_file: str) -> str:
    """``…/claims.csv`` → ``…/claims``: the ``--out-table`` argument the table commands add extensions to."""
    return os.path.splitext(table_file)[0]


def log(config: dict, stage: str, name: str) -> str:
    """The log of one job of ``stage``; ``name`` holds the rule's wildcards."""
    return path(LOG, config, stage=stage, name=name)


def benchmark(config: dict, stage: str, name: str) -> str:
    """The job's usage file (``daamflow --usage``: wall, CPU, peak memory; read by benchmarks/bench_workflow.py)
    beside :func:`log`."""
    return path(BENCHMARK, config, stage=stage, name=name)


def feature_files(config: dict, dataset: str, encoder: str) -> dict[str, str]:
    """The feature store of (dataset, encoder) by name: features, index, manifest."""
    return {f.split(".")[0]: path(FEATURES, config, dataset=dataset, encoder=encoder, file=f) for f in FEATURE_FILES}


def run_table(config: dict, dataset: str, protocol: str, method: str) -> str:
    """runs.csv of one (dataset, protocol, method); the encoder is the dataset's."""
    encoder = config["datasets"][dataset]["encoder"]
    return path(RUN_TABLE, config, dataset=dataset, encoder=encoder, protocol=protocol, method=method)


def run_tables(config: dict, dataset: str | None = None) -> list[str]:
    """runs.csv of every (dataset, protocol, method) of the grid, or of one dataset."""
    names = [dataset] if dataset is not None else list(config["datasets"])
    return [run_table(config, d, p, m) for d in names for p in config["protocols"] for m in config["methods"]]


def dataset_table_stems(config: dict, dataset: str) -> list[str]:
    """The table stems of one dataset: one per protocol, then the protocols side by side."""
    return [path(PROTOCOL_TABLE, config, dataset=dataset, protocol=p) for p in config["protocols"]] + [
        path(PROTOCOLS_TABLE, config, dataset=dataset)
    ]


def dataset_tables(config: dict, dataset: str) -> list[str]:
    """The report files of one dataset: its tables (csv, md, tex) and the accuracy figure."""
    files = [f"{s}.{ext}" for s in dataset_table_stems(config, dataset) for ext in TABLE_FORMATS]
    return files + [path(ACCURACY_FIGURE, config, dataset=dataset)]


def importance_k(config: dict, dataset: str) -> int:
    imp = config["importance"]
    return imp.get("k_per_dataset", {}).get(dataset, imp.get("k", 1))


def importance_targets(config: dict, dataset: str) -> list[str]:
    """The IF figures and tables of one dataset (empty when the analyses are off)."""
    imp = config.get("importance", {})
    if not imp.get("enabled"):
        return []
    out = table_files(ABLATION_TABLE, config, dataset=dataset)
    for protocol in config["protocols"]:
        cell = {"dataset": dataset, "protocol": protocol}
        out += [path(IF_HEATMAP, config, **cell), path(IF_LAYERS, config, **cell)]
        if imp.get("probe", True):
            out += table_files(IF_PROBE_TABLE, config, **cell) + [path(IF_PROBE_FIGURE, config, **cell)]
    return out


def ablation_run_tables(config: dict, dataset: str) -> list[str]:
    return [
        run_table(config, dataset, protocol, label)
        for protocol in config["protocols"]
        for method in config["importance"]["ablation_methods"]
        for label in [method] + [catalog.label(method, sel) for sel in catalog.SELECTIONS]
    ]


def if_source_run_tables(config: dict) -> list[str]:
    """runs.csv of the ablation methods on the high-IF layers of the other IF source (``<method>@high_if_<source>``),
    and of the configured source (``<method>@high``) they are compared with; empty unless
    ``importance.compare_if_sources``."""
    imp = config.get("importance", {})
    if not (imp.get("enabled") and imp.get("compare_if_sources")):
        return []
    other = other_if_source(config)
    return [run_table(config, d, p, f"{m}@{label}") for d in config["datasets"] for p in config["protocols"]
            for m in imp["ablation_methods"] for label in ("high", f"high_if_{other}")]


def other_if_source(config: dict) -> str:
    return next(s for s in catalog.IF_SOURCES if s != config["importance"]["if_source"])


def daam_run_tables(config: dict) -> list[str]:
    """runs.csv of the methods with learned δ/ξ in the grid (for the learned-parameter table)."""
    return [p for p in run_tables(config) if p.split("/")[-2] in catalog.LEARNED_GAUSSIANS]


def vqvae_runs(config: dict) -> list[str]:
    vq = config.get("vqvae", {})
    return [path(VQVAE_METRICS, config, variant=v, seed=s) for v in vq.get("variants", []) for s in vq.get("seeds", [])]


def all_targets(config: dict) -> list[str]:
    out = [path(SUMMARY_MD, config), path(SUMMARY_JSON, config)]
    for name in config["datasets"]:
        out += dataset_tables(config, name)
    if config.get("importance", {}).get("enabled"):
        for name in config["datasets"]:
            out += importance_targets(config, name)
        if daam_run_tables(config):
            out += table_files(LEARNED_TABLE, config)
    if config.get("vqvae", {}).get("enabled"):
        out += [path(t, config) for t in (VQVAE_CSV, VQVAE_MD, VQVAE_FIGURE)]
    return out


# ---- the paper's tables, claims and curves (rules/report.smk) ------------------------------------------------------

def paper_datasets(config: dict) -> dict[str, str]:
    """Our dataset -> the paper's dataset it is or stands in for (its ``paper_dataset``), for those that have one."""
    return {d: ds["paper_dataset"] for d, ds in config["datasets"].items() if ds.get("paper_dataset")}


def stand_ins(config: dict) -> list[str]:
    """The datasets of :func:`paper_datasets` whose data are not the paper's dataset (offline stand-ins)."""
    return [d for d, paper in paper_datasets(config).items() if config["datasets"][d]["source"] != paper]


def is_paper_grid(config: dict) -> bool:
    """Every dataset is one of the paper's own (no stand-in disclaimer in the summary)."""
    papers = paper_datasets(config)
    return len(papers) == len(config["datasets"]) and not stand_ins(config)


def vs_paper_tables(config: dict, dataset: str) -> list[str]:
    """``{dataset}_{protocol}_vs_paper`` (csv, md, tex) of every protocol: ours beside the paper's table."""
    return [f for p in config["protocols"] for f in table_files(VS_PAPER_TABLE, config, dataset=dataset, protocol=p)]


def importance_curve_inputs(config: dict) -> dict[str, list[str]]:
    """The per-layer IF tables and probe tables the layer curves are drawn from (empty when the analyses are off)."""
    imp = config.get("importance", {})
    if not imp.get("enabled"):
        return {"per_layer": [], "probes": []}
    cells = [{"dataset": d, "protocol": p} for d in config["datasets"] for p in config["protocols"]]
    return {
        "per_layer": [path(IMPORTANCE, config, file="per_layer.csv", **c) for c in cells],
        "probes": [path(PROBE, config, **c) for c in cells] if imp.get("probe", True) else [],
    }


def curve_files(config: dict) -> list[str]:
    """Plot-ready CSVs (DVC ``plots``): per-epoch history of every run table, per-layer IF/probe curves."""
    cells = [{"dataset": d, "protocol": p} for d in config["datasets"] for p in config["protocols"]]
    out = [path(HISTORY_CURVE, config, method=m, **c) for c in cells for m in config["methods"]]
    if config.get("importance", {}).get("enabled"):
        out += [path(LAYER_CURVE, config, **c) for c in cells]
    return out


def summary_embeds(config: dict) -> list[str]:
    """``TITLE=FILE``: the markdown tables summary.md shows in full."""
    titled = [("The paper's summary table", PAPER_SUMMARY_TABLE)] if paper_datasets(config) else []
    titled += [("The paper's claims", CLAIMS_TABLE), ("Effects of the released code's quirks", QUIRKS_TABLE)]
    return [f"{title}={path(stem, config)}.md" for title, stem in titled]


def report_tables(config: dict) -> list[str]:
    """Every table beyond the per-dataset ones: the paper's tables with ours beside them, the summary table, the
    parameter table, the claims, the paired comparisons and the quirk effects (all csv, md, tex), claims.json and the
    curves."""
    stems = [PARAMETERS_TABLE, CLAIMS_TABLE, PAIRED_TABLE, QUIRKS_TABLE]
    stems += [PAPER_SUMMARY_TABLE] if paper_datasets(config) else []
    out = [f for s in stems for f in table_files(s, config)] + [path(CLAIMS_JSON, config)]
    for name in paper_datasets(config):
        out += vs_paper_tables(config, name)
    return out + curve_files(config)
