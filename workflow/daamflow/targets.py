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


def run_tables(config: dict, dataset: str | None = None) -> list[str]:
    """runs.csv of every (dataset, protocol, method) of the grid, or of one dataset."""
    out = []
    for name, ds in config["datasets"].items():
        if dataset is not None and name != dataset:
            continue
        for protocol in config["protocols"]:
            for method in config["methods"]:
                out.append(path(RUNS, config, dataset=name, encoder=ds["encoder"], protocol=protocol, method=method) + "/runs.csv")
    return out


def dataset_tables(config: dict, dataset: str) -> list[str]:
    """The report files of one dataset: a table per protocol, the protocols side by side, the accuracy figure."""
    tables = path(TABLES, config)
    stems = [f"{tables}/{dataset}_{p}" for p in config["protocols"]] + [f"{tables}/{dataset}_protocols"]
    return [f"{s}.{ext}" for s in stems for ext in ("csv", "md", "tex")] + [
        path(FIGURES, config) + f"/{dataset}_accuracy.png"
    ]


def vqvae_runs(config: dict) -> list[str]:
    vq = config.get("vqvae", {})
    return [f"{config['results_dir']}/vqvae/{v}/seed{s}/metrics.json" for v in vq.get("variants", []) for s in vq.get("seeds", [])]


def all_targets(config: dict) -> list[str]:
    tables = path(TABLES, config)
    out = [f"{tables}/summary.md", f"{tables}/summary.json"]
    for name in config["datasets"]:
        out += dataset_tables(config, name)
    if config.get("vqvae", {}).get("enabled"):
        out += [f"{tables}/vqvae.csv", f"{tables}/vqvae.md", path(FIGURES, config) + "/vqvae_reconstructions.png"]
    return out
