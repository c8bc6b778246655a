"""Output paths of the workflow: one place for the path templates the rules and the tests share."""
from __future__ import annotations

DATA = "{R}/data/{dataset}"
ENCODER = "{R}/encoders/{encoder}"
FEATURES = "{R}/features/{dataset}/{encoder}"
RUNS = "{R}/runs/{dataset}/{encoder}/{protocol}/{method}"
TABLES = "{R}/tables"
FIGURES = "{R}/figures"
FEATURE_FILES = ("features.npy", "index.csv", "manifest.json")


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
    R, figs, tables = config["results_dir"], path(FIGURES, config), path(TABLES, config)
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
