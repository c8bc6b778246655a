"""Layer analyses (`daamflow importance …`): does the Importance Factor find the layers that matter?

- ``map``: IF maps of a DAAM method's runs (per fold, then mean ± std), the paper's Fig. 2 heatmap and Fig. 3
  per-layer shares, and the layers each fold's ablation retrains on (top-k, bottom-k by IF, k random under a seed;
  leak-free per fold under ``clean``, see ``importance.choose_layers``).
- ``probe``: a linear probe on each single layer, all folds → the per-layer accuracy curve.
- ``correlate``: per-layer IF against per-layer probe accuracy (Spearman per fold and on average), one figure with
  the probe curve, IF and the learned weighted-sum layer weights overlaid.
- ``ranges``: the learned δ (mean offset) and ξ (scaled variance) ranges of the DAAM runs (the paper's table).
- ``ablation``: the high-IF / low-IF / random-layer retraining in the paper's table shape.

Layer numbers in tables and figures are 1-based (as the paper); in ``layers.json`` they are 0-based indices of the
feature store's layer axis. With one selected layer DAAM's variance across layers is 0: at initialisation its gate is
exactly 1 and the gradient with respect to δ vanishes, so a single-layer DAAM acts as the identity in front of the conv
head (tested); the ablation keeps the method as configured and this is the behaviour it gets.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from daamflow import catalog  # noqa: E402
from daamflow.catalog import SELECTION_PART  # noqa: E402
from daamflow.atomic import atomic_write, save_npy, write_csv, write_json  # noqa: E402
from daamflow.config import read_settings  # noqa: E402
from daamflow.analysis.importance import (  # noqa: E402
    SOURCES, choose_layers, importance_factor, layer_share, per_layer_importance, read_fold_layers,
)
from daamflow.report.runs import read_run_table  # noqa: E402
from daamflow.report.tables import write_table  # noqa: E402

log = logging.getLogger(__name__)


def fold_dirs(run_dir: Path) -> list[Path]:
    dirs = sorted((p for p in Path(run_dir).iterdir() if (p / "metrics.json").is_file()), key=lambda p: p.name)
    if not dirs:
        raise FileNotFoundError(f"no finished folds (…/metrics.json) under {run_dir}")
    return dirs


def if_summary(run_dir: Path, source: str = "selected") -> dict:
    """Per-fold IF maps of a DAAM run directory and their summaries (arrays, not yet serialised); ``source``: which
    density map of each fold (``importance.SOURCES``)."""
    if source not in SOURCES:
        raise ValueError(f"unknown IF source {source!r}; expected one of {sorted(SOURCES)}")
    maps, names = [], []
    for d in fold_dirs(run_dir):
        path = d / SOURCES[source]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: IF (importance.if_source: {source}) needs a DAAM method's "
                                    f"density maps; a fold trained before `daamflow train` wrote it needs retraining "
                                    f"(remove {d})")
        maps.append(importance_factor(np.load(path)))
        names.append(d.name)
    stack = np.stack(maps)  # (folds, N, d)
    per_layer = np.stack([per_layer_importance(m) for m in maps])  # (folds, N)
    share = np.stack([layer_share(m) for m in maps])
    return {"folds": names, "if_maps": stack, "per_layer": per_layer, "share": share}


def _save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def heatmap_figure(if_map: np.ndarray, path: Path, title: str) -> None:
    """The paper's Fig. 2: mean IF, output feature (x) against layer (y, 1-based)."""
    n, d = if_map.shape
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * n + 1.2)))
    im = ax.imshow(if_map, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower",
                   extent=(0.5, d + 0.5, 0.5, n + 0.5), interpolation="nearest")
    ax.set_xlabel("output feature")
    ax.set_ylabel("layer")
    ax.set_yticks(range(1, n + 1))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="Importance Factor")
    fig.tight_layout()
    _save_figure(fig, path)


def layer_bar_figure(share: np.ndarray, path: Path, title: str) -> None:
    """The paper's Fig. 3: each layer's share of the summed IF (%), mean over folds with the fold spread."""
    mean, std = 100 * share.mean(axis=0), 100 * share.std(axis=0)
    layers = np.arange(1, share.shape[1] + 1)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(layers) + 2), 3.5))
    ax.bar(layers, mean, yerr=std, capsize=3, color="C0", alpha=0.8)
    for row in 100 * share:
        ax.scatter(layers, row, color="k", s=6, zorder=3)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of total IF (%)")
    ax.set_xticks(layers)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)


def write_choice(path: Path, run_dir: Path, per_layer: np.ndarray, folds: list[str], protocol: str, k: int, seed: int,
                 source: str) -> dict:
    """The per-fold layer choice (``choose_layers``) of one IF source, as layers.json."""
    chosen = choose_layers(per_layer, folds, protocol, k, seed)
    write_json(path, {**chosen, "k": k, "seed": seed, "indexing": "0-based", "protocol": protocol,
                      "if_source": source, "runs": str(run_dir)})
    return chosen


def write_map_outputs(run_dir: Path, out_dir: Path, k: int, seed: int, heatmap: Path, bars: Path, title: str,
                      protocol: str, source: str = "selected", other_source: str | None = None) -> dict:
    """if_map.npy, per_layer.csv, layers.json (the per-fold choice, see ``choose_layers``) and the two figures; with
    ``other_source`` also ``layers_<other_source>.json``, the choice from the other density maps (for the
    quirk-effect table)."""
    summary = if_summary(run_dir, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    mean_map = summary["if_maps"].mean(axis=0)
    save_npy(out_dir / "if_map.npy", mean_map.astype(np.float32))
    per_layer, share = summary["per_layer"], summary["share"]
    table = pd.DataFrame({
        "layer": np.arange(1, per_layer.shape[1] + 1),
        "if_mean": per_layer.mean(axis=0), "if_std": per_layer.std(axis=0),
        "share_mean": share.mean(axis=0), "share_std": share.std(axis=0),
    })
    for name, row in zip(summary["folds"], per_layer):
        table[f"if_{name}"] = row
    write_csv(out_dir / "per_layer.csv", table)
    chosen = write_choice(out_dir / "layers.json", run_dir, per_layer, summary["folds"], protocol, k, seed, source)
    if other_source is not None:
        other = if_summary(run_dir, other_source)
        write_choice(out_dir / f"layers_{other_source}.json", run_dir, other["per_layer"], other["folds"], protocol, k,
                     seed, other_source)
    heatmap_figure(mean_map, heatmap, f"{title}: Importance Factor (mean over {len(summary['folds'])} folds)")
    layer_bar_figure(share, bars, f"{title}: per-layer share of IF")
    return chosen


def read_probes(path: Path) -> pd.DataFrame:
    """The long table (layer 1-based, fold, accuracy) ``run_probes`` wrote."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no probe table {path}: run `daamflow importance probe` first")
    return pd.read_csv(path)[["layer", "fold", "accuracy"]]


PROBE_C = 1.0  # inverse L2 strength of the probe; features are standardised, so one value serves every layer


def probe_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    """The linear probe's accuracy: features standardised with ``train``'s mean and spread, multinomial logistic
    regression (L-BFGS to convergence, L2 with C = ``PROBE_C``) fit on ``train``, scored on ``test``."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = train.mean(axis=0), train.std(axis=0)
    scale[scale == 0] = 1.0
    probe = LogisticRegression(C=PROBE_C, max_iter=5000).fit((train - mean) / scale, train_labels)
    return float((probe.predict((test - mean) / scale) == test_labels).mean())


def run_probes(store_dir: Path, settings: dict, out_dir: Path, threads: int = 1) -> pd.DataFrame:
    """A converged linear probe on every single layer, every fold/seed of ``settings``' evaluation and protocol;
    writes ``probe.csv`` (layer 1-based, fold, accuracy, n_train, n_test).

    The probe is multinomial logistic regression (L-BFGS to convergence, L2 with C = ``PROBE_C``) on features
    standardised with the fitted rows' mean and spread, scored on the fold's test part: the usual meaning of "linear
    probe", a measure of what a layer holds linearly. (A ``linear`` head trained for the heads' few epochs at their
    learning rate measured mostly how fast it moves: on unscaled features it stopped far below a converged fit.)
    It selects nothing, so under ``clean`` it fits on everything but the test part (the training and the dev part,
    which exists to select epochs); under ``paper``, whose selection part is the test part, on the training part.
    """
    from threadpoolctl import threadpool_limits

    from daamflow.data.features import load_store
    from daamflow.run.train import splits_of

    store = load_store(store_dir)
    dev_is_test = SELECTION_PART[settings["protocol"]] == "test"
    splits = splits_of(store, settings)
    fitted = {s.name: s.train if dev_is_test else np.union1d(s.train, s.select) for s in splits}
    tests = {s.name: s.test for s in splits}
    rows = []
    for layer in range(store.num_layers):
        x = np.asarray(store.features[:, layer], dtype=np.float64)
        for name, fit_rows in fitted.items():
            with threadpool_limits(threads):  # the job's share of the cores (BLAS would take them all)
                accuracy = probe_accuracy(x[fit_rows], store.labels[fit_rows], x[tests[name]],
                                          store.labels[tests[name]])
            rows.append({"layer": layer + 1, "fold": name, "accuracy": accuracy,
                         "n_train": len(fit_rows), "n_test": len(tests[name])})
    table = pd.DataFrame(rows)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_csv(Path(out_dir) / "probe.csv", table)
    return table


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant (no ranking to compare)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b):
        raise ValueError(f"spearman: lengths differ ({len(a)} vs {len(b)})")
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def correlation(per_layer_if: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """Spearman(per-layer IF, per-layer probe accuracy) for each fold present in both, then the mean."""
    rows = []
    wide = probes.pivot(index="layer", columns="fold", values="accuracy").sort_index()
    for fold in wide.columns:
        column = f"if_{fold}"
        if column in per_layer_if:
            rows.append({"fold": fold, "spearman": spearman(per_layer_if[column], wide[fold])})
    rows.append({"fold": "mean IF vs mean accuracy", "spearman": spearman(per_layer_if["if_mean"], wide.mean(axis=1))})
    frame = pd.DataFrame(rows)
    per_fold = frame["spearman"].iloc[:-1]
    frame.loc[len(frame)] = {"fold": "mean over folds", "spearman": float(per_fold.mean()) if len(per_fold) else np.nan}
    return frame


def overlay_figure(per_layer_if: pd.DataFrame, probes: pd.DataFrame, weights: np.ndarray | None, path: Path, title: str) -> None:
    """Per-layer probe accuracy (left axis) with per-layer IF and weighted-sum layer weights (right axis)."""
    acc = probes.groupby("layer")["accuracy"].agg(["mean", "std"])
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(acc) + 2.5), 3.6))
    ax.errorbar(acc.index, 100 * acc["mean"], yerr=100 * acc["std"], marker="o", color="C0", capsize=3,
                label="linear probe accuracy")
    ax.set_xlabel("layer")
    ax.set_ylabel("probe accuracy (%)", color="C0")
    ax.set_xticks(acc.index)
    right = ax.twinx()
    right.errorbar(per_layer_if["layer"], per_layer_if["if_mean"], yerr=per_layer_if["if_std"], marker="s",
                   color="C1", capsize=3, label="per-layer IF")
    if weights is not None:
        right.plot(np.arange(1, len(weights) + 1), weights / weights.max(), marker="^", color="C2",
                   label="weighted-sum layer weight (÷ max)")
    right.set_ylabel("IF / relative weight")
    right.set_ylim(0, 1.05)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)


def mean_layer_weights(run_dir: Path | None) -> np.ndarray | None:
    if run_dir is None or not Path(run_dir).is_dir():
        return None
    rows = [json.loads((d / "layer_weights.json").read_text())["weights"] for d in fold_dirs(run_dir)
            if (d / "layer_weights.json").is_file()]
    return np.mean(rows, axis=0) if rows else None


def learned_ranges(run_dirs: list[Path]) -> pd.DataFrame:
    """Min/max of the learned δ and ξ over all heads, features and folds, per dataset × protocol × method."""
    rows = []
    for run_dir in run_dirs:
        settings = json.loads((Path(run_dir) / "settings.json").read_text())
        deltas, xis = [], []
        for d in fold_dirs(run_dir):
            g = json.loads((d / "gaussians.json").read_text())
            deltas.append(np.ravel(g["mean_offset"]))
            xis.append(np.ravel(g["scaled_variance"]))
        delta, xi = np.concatenate(deltas), np.concatenate(xis)
        rows.append({"dataset": settings["dataset"], "protocol": settings["protocol"], "method": settings["method"],
                     "delta_min": delta.min(), "delta_max": delta.max(), "xi_min": xi.min(), "xi_max": xi.max()})
    return pd.DataFrame(rows)


def layers_label(per_fold: dict[str, list[int]]) -> str:
    """1-based layers of a selection: one list when every fold has the same, else each fold's."""
    text = {fold: ",".join(str(i + 1) for i in layers) for fold, layers in per_fold.items()}
    if len(set(text.values())) == 1:
        return next(iter(text.values()))
    return "; ".join(f"{fold}: {layers}" for fold, layers in text.items())


def ablation_table(run_tables: list[Path], layers_files: dict[str, Path]) -> pd.DataFrame:
    """High-IF vs low-IF vs random layers (and all layers), per protocol: folds, mean, std (population)."""
    rows = []
    for path in run_tables:
        runs = read_run_table(path)
        method = runs["method"].iloc[0]
        base, selection = catalog.base(method), catalog.variant(method)
        protocol = runs["protocol"].iloc[0]
        layers = "all"
        if selection:
            layers = layers_label(read_fold_layers(layers_files[protocol], selection))
        row = {"protocol": protocol, "method": base, "selection": selection or "all", "layers": layers}
        acc = 100 * runs.set_index("fold")["accuracy"]
        row.update(acc.to_dict())
        row["mean"], row["std"] = float(acc.mean()), float(acc.std(ddof=0))
        rows.append(row)
    order = {"high": 0, "low": 1, "random": 2, "all": 3}
    frame = pd.DataFrame(rows)
    return frame.sort_values(["protocol", "selection"], key=lambda c: c.map(order) if c.name == "selection" else c).reset_index(drop=True)


def with_published_ranges(table: pd.DataFrame, paper_of: dict[str, str], published: dict | None = None) -> pd.DataFrame:
    """The learned-range table with the paper's δ/ξ ranges (its best g=8 models) of each row's ``paper_dataset``
    and ours − published for every bound; rows of datasets without one get empty published cells."""
    from daamflow.report.published import load_published

    ref = (load_published() if published is None else published)["learned_ranges"]["datasets"]
    out = table.copy()
    out["paper_dataset"] = out["dataset"].map(lambda d: paper_of.get(d, ""))
    for param in ("delta", "xi"):
        for i, bound in enumerate(("min", "max")):
            pub = out["paper_dataset"].map(lambda p: float(ref[p][param][i]) if p else np.nan)
            out[f"published_{param}_{bound}"] = pub
            out[f"diff_{param}_{bound}"] = out[f"{param}_{bound}"] - pub
    return out


def with_published_ablation(table: pd.DataFrame, paper_dataset: str, published: dict | None = None) -> pd.DataFrame:
    """The ablation table with the paper's IF ablation of ``paper_dataset`` beside it: its layers (1-based), mean,
    std and the difference ours − published on the high-IF and low-IF rows, and the method's published full-layer
    accuracy on the ``all`` rows (the random-layer control has no published counterpart)."""
    from daamflow.report.published import load_published

    pub = load_published() if published is None else published
    ablation = pub["if_ablation"]["datasets"][paper_dataset]
    accuracy = pub["accuracy"][paper_dataset]["methods"]
    out = table.copy()
    rows = []
    for method, selection in zip(out["method"], out["selection"]):
        if selection in ("high", "low"):
            rec = ablation[selection]
            rows.append((",".join(map(str, rec["layers"])), rec["mean"], rec.get("std", np.nan)))
        elif selection == "all" and method in accuracy:
            rows.append(("all", accuracy[method]["mean"], accuracy[method]["std"]))
        else:
            rows.append(("", np.nan, np.nan))
    out["published_layers"] = [r[0] for r in rows]
    out["published_mean"] = [float(r[1]) for r in rows]
    out["published_std"] = [float(r[2]) for r in rows]
    out["difference"] = out["mean"] - out["published_mean"]  # not *_mean: the renderer pairs *_mean with *_std
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="part", required=True, metavar="part")
    m = sub.add_parser("map", help="IF maps, heatmap, per-layer bars and the ablation's layer choice")
    m.add_argument("--runs", required=True, type=Path, help="run directory of a DAAM method (folds with density.npy)")
    m.add_argument("--out", required=True, type=Path, help="folder for if_map.npy, per_layer.csv, layers.json")
    m.add_argument("--k", required=True, type=int, help="layers per selection (the paper: 1 speech, 3 text/vision)")
    m.add_argument("--seed", type=int, default=0, help="seed of the random-layer control")
    m.add_argument("--protocol", required=True, choices=("paper", "clean"),
                   help="clean: each fold's layers from its own run (leak-free); paper: one choice from the mean IF")
    m.add_argument("--if-source", default="selected", choices=sorted(SOURCES),
                   help="the selected model's density map, or the average over every epoch's (released code)")
    m.add_argument("--other-source", default=None, choices=sorted(SOURCES),
                   help="also write layers_<SOURCE>.json, the choice from this source's maps (quirk-effect table)")
    m.add_argument("--heatmap", required=True, type=Path)
    m.add_argument("--bars", required=True, type=Path)
    m.add_argument("--title", default="")
    c = sub.add_parser("correlate", help="per-layer IF vs per-layer probe accuracy: Spearman table and overlay figure")
    c.add_argument("--per-layer", required=True, type=Path, help="per_layer.csv from `importance map`")
    c.add_argument("--probes", required=True, type=Path, help="probe.csv of `importance probe`")
    c.add_argument("--weights-runs", type=Path, default=None, help="weighted_sum run directory (layer weights)")
    c.add_argument("--out-table", required=True, type=Path, help="table stem (.csv/.md/.tex are written)")
    c.add_argument("--figure", required=True, type=Path)
    c.add_argument("--title", default="")
    r = sub.add_parser("ranges", help="learned δ/ξ ranges of DAAM runs")
    r.add_argument("--runs", nargs="+", required=True, type=Path, help="run directories (settings.json, folds)")
    r.add_argument("--out-table", required=True, type=Path, help="table stem")
    r.add_argument("--paper-datasets", nargs="*", default=[], metavar="DATASET=PAPER_DATASET",
                   help="add the paper's published ranges beside the rows of these datasets")
    pr = sub.add_parser("probe", help="a converged linear probe (logistic regression) on each single layer, every "
                                      "fold/seed: <out>/probe.csv")
    pr.add_argument("--features", required=True, type=Path, help="feature store directory")
    pr.add_argument("--settings", required=True,
                    help="train settings JSON: its evaluation, protocol and seed give the folds (as the heads')")
    pr.add_argument("--out", required=True, type=Path, help="folder of probe.csv")
    pr.add_argument("--threads", type=int, default=1, help="BLAS threads of the fits")
    a = sub.add_parser("ablation", help="the high/low/random-layer ablation table")
    a.add_argument("--runs", nargs="+", required=True, type=Path, help="runs.csv of the ablation (and full) runs")
    a.add_argument("--layers", nargs="+", required=True, help="PROTOCOL=layers.json pairs")
    a.add_argument("--out-table", required=True, type=Path, help="table stem")
    a.add_argument("--title", default="")
    a.add_argument("--paper-dataset", choices=("iemocap", "cifar100", "agnews"), default=None,
                   help="add the paper's IF ablation of this dataset beside ours")


def main(args: argparse.Namespace) -> int:
    stem = getattr(args, "out_table", None)
    if args.part == "map":
        chosen = write_map_outputs(args.runs, args.out, args.k, args.seed, args.heatmap, args.bars, args.title,
                                   args.protocol, args.if_source, args.other_source)
        log.info("layers (0-based), %s: %s", chosen["scope"], chosen["folds"])
    elif args.part == "correlate":
        per_layer = pd.read_csv(args.per_layer)
        probes = read_probes(args.probes)
        table = correlation(per_layer, probes)
        write_table(table, stem, f"{args.title}: Spearman correlation of per-layer IF and per-layer probe accuracy")
        overlay_figure(per_layer, probes, mean_layer_weights(args.weights_runs), args.figure, args.title)
        log.info("\n%s", table.to_string(index=False))
    elif args.part == "probe":
        table = run_probes(args.features, read_settings(args.settings), args.out, args.threads)
        log.info("probe accuracy per layer:\n%s", table.groupby("layer")["accuracy"].mean().to_string())
    elif args.part == "ranges":
        table = learned_ranges(args.runs)
        caption = "Learned DAAM parameters: range of the mean offset δ and the scaled variance ξ"
        if args.paper_datasets:
            table = with_published_ranges(table, dict(item.split("=", 1) for item in args.paper_datasets))
            caption += "; published: the paper's ranges of its best g=8 models, diff = ours − published"
        write_table(table, stem, caption, digits=3)
    else:
        layers = dict(item.split("=", 1) for item in args.layers)
        table = ablation_table(args.runs, layers)
        caption = f"{args.title}: retrained on the high-IF, low-IF and random layers (accuracy %)"
        if args.paper_dataset:
            table = with_published_ablation(table, args.paper_dataset)
            caption += (f"; published: the paper's {args.paper_dataset} ablation (its layers), "
                        "difference = ours − published mean")
        write_table(table, stem, caption)
    return 0
