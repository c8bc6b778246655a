"""Output paths of the workflow: one place for the path templates the rules and the tests share."""
from __future__ import annotations

DATA = "{R}/data/{dataset}"
ENCODER = "{R}/encoders/{encoder}"
FEATURES = "{R}/features/{dataset}/{encoder}"
RUNS = "{R}/runs/{dataset}/{encoder}/{protocol}/{method}"
TABLES = "{R}/tables"
FIGURES = "{R}/figures"
FEATURE_FILES = ("features.npy", "index.csv", "manifest.json")
# heads trained on the cached features (rule train); the LoRA methods fine-tune the encoder (rule finetune).
# mha@released: the released IEMOCAP MHA baseline (one layer, attention across the mini-batch, 1-channel conv head)
HEAD_METHODS = ("daam_v1", "daam_v2", "mixture", "gqdaam", "gqa", "mha", "mha_bn", "identity", "weighted_sum", "linear",
                "mha@released")


def path(template: str, config: dict, **fields) -> str:
    return template.format(R=config["results_dir"], **fields)


def run_table(config: dict, dataset: str, protocol: str, method: str) -> str:
    """runs.csv of one (dataset, protocol, method); the encoder is the dataset's."""
    encoder = config["datasets"][dataset]["encoder"]
    return path(RUNS, config, dataset=dataset, encoder=encoder, protocol=protocol, method=method) + "/runs.csv"


def run_tables(config: dict, dataset: str | None = None) -> list[str]:
    """runs.csv of every (dataset, protocol, method) of the grid, or of one dataset."""
    names = [dataset] if dataset is not None else list(config["datasets"])
    return [run_table(config, d, p, m) for d in names for p in config["protocols"] for m in config["methods"]]


def dataset_tables(config: dict, dataset: str) -> list[str]:
    """The report files of one dataset: a table per protocol, the protocols side by side, the accuracy figure."""
    tables = path(TABLES, config)
    stems = [f"{tables}/{dataset}_{p}" for p in config["protocols"]] + [f"{tables}/{dataset}_protocols"]
    return [f"{s}.{ext}" for s in stems for ext in ("csv", "md", "tex")] + [
        path(FIGURES, config) + f"/{dataset}_accuracy.png"
    ]


DAAM_METHODS = ("daam_v1", "daam_v2", "gqdaam")  # methods with learned δ/ξ per head and feature
SELECTIONS = ("high", "low", "random")


def importance_k(config: dict, dataset: str) -> int:
    imp = config["importance"]
    return imp.get("k_per_dataset", {}).get(dataset, imp.get("k", 1))


def importance_targets(config: dict, dataset: str) -> list[str]:
    """The IF figures and tables of one dataset (empty when the analyses are off)."""
    imp = config.get("importance", {})
    if not imp.get("enabled"):
        return []
    figs, tables = path(FIGURES, config), path(TABLES, config)
    out = [f"{tables}/{dataset}_ablation.{ext}" for ext in ("csv", "md", "tex")]
    for protocol in config["protocols"]:
        out += [f"{figs}/{dataset}_{protocol}_if_heatmap.png", f"{figs}/{dataset}_{protocol}_if_layers.png"]
        if imp.get("probe", True):
            out += [f"{tables}/{dataset}_{protocol}_if_probe.{ext}" for ext in ("csv", "md", "tex")]
            out += [f"{figs}/{dataset}_{protocol}_if_probe.png"]
    return out


def ablation_run_tables(config: dict, dataset: str) -> list[str]:
    return [
        run_table(config, dataset, protocol, label)
        for protocol in config["protocols"]
        for method in config["importance"]["ablation_methods"]
        for label in [method] + [f"{method}@{sel}" for sel in SELECTIONS]
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
    from daamflow.analysis.importance import SOURCES

    return next(s for s in SOURCES if s != config["importance"]["if_source"])


def daam_run_dirs(config: dict) -> list[str]:
    """Run directories of the DAAM methods in the grid (for the learned-parameter table)."""
    return [p[: -len("/runs.csv")] for p in run_tables(config) if p.split("/")[-2] in DAAM_METHODS]


def vqvae_runs(config: dict) -> list[str]:
    vq = config.get("vqvae", {})
    return [f"{config['results_dir']}/vqvae/{v}/seed{s}/metrics.json" for v in vq.get("variants", []) for s in vq.get("seeds", [])]


def all_targets(config: dict) -> list[str]:
    tables = path(TABLES, config)
    out = [f"{tables}/summary.md", f"{tables}/summary.json"]
    for name in config["datasets"]:
        out += dataset_tables(config, name)
    if config.get("importance", {}).get("enabled"):
        for name in config["datasets"]:
            out += importance_targets(config, name)
        if daam_run_dirs(config):
            out += [f"{tables}/learned_parameters.{ext}" for ext in ("csv", "md", "tex")]
    if config.get("vqvae", {}).get("enabled"):
        out += [f"{tables}/vqvae.csv", f"{tables}/vqvae.md", path(FIGURES, config) + "/vqvae_reconstructions.png"]
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


def paper_tables(config: dict, dataset: str) -> list[str]:
    """``{dataset}_{protocol}_vs_paper`` (csv, md, tex) of a dataset with a ``paper_dataset``; else nothing."""
    if dataset not in paper_datasets(config):
        return []
    tables = path(TABLES, config)
    return [f"{tables}/{dataset}_{p}_vs_paper.{ext}" for p in config["protocols"] for ext in ("csv", "md", "tex")]


def importance_curve_inputs(config: dict) -> dict[str, list[str]]:
    """The per-layer IF tables and probe tables the layer curves are drawn from (empty when the analyses are off)."""
    imp = config.get("importance", {})
    if not imp.get("enabled"):
        return {"per_layer": [], "probes": []}
    R, cells = config["results_dir"], [(d, p) for d in config["datasets"] for p in config["protocols"]]
    return {
        "per_layer": [f"{R}/importance/{d}/{p}/per_layer.csv" for d, p in cells],
        "probes": [f"{R}/probes/{d}/{p}/probe.csv" for d, p in cells] if imp.get("probe", True) else [],
    }


def curve_files(config: dict) -> list[str]:
    """Plot-ready CSVs (DVC ``plots``): per-epoch history of every run table, per-layer IF/probe curves."""
    curves = path(TABLES, config) + "/curves"
    out = [
        f"{curves}/history/{d}_{p}_{m}.csv"
        for d in config["datasets"] for p in config["protocols"] for m in config["methods"]
    ]
    if config.get("importance", {}).get("enabled"):
        out += [f"{curves}/layers/{d}_{p}.csv" for d in config["datasets"] for p in config["protocols"]]
    return out


def report_tables(config: dict) -> list[str]:
    """Every table beyond the per-dataset ones: the paper's tables with ours beside them, the summary table, the
    parameter table, the claims, the paired comparisons and the quirk effects (all csv, md, tex), claims.json and the
    curves."""
    tables = path(TABLES, config)
    stems = [f"{tables}/parameters", f"{tables}/claims", f"{tables}/paired", f"{tables}/quirks"]
    if paper_datasets(config):
        stems.append(f"{tables}/paper_summary")
    out = [f"{s}.{ext}" for s in stems for ext in ("csv", "md", "tex")] + [f"{tables}/claims.json"]
    for name in config["datasets"]:
        out += paper_tables(config, name)
    return out + curve_files(config)
