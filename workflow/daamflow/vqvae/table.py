"""Plain vs DAAM over finished runs: the table (CSV numbers, Markdown mean ± std over seeds) and the comparison grid."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from daamflow.atomic import write_csv, write_text
from daamflow.vqvae.config import VARIANTS
from daamflow.vqvae.plots import plot_grid

TABLE_METRICS = {  # key in metrics.json "metrics" -> (column title, format)
    "mse": ("recon MSE", ".5f"), "psnr": ("PSNR (dB)", ".2f"), "ssim": ("SSIM", ".4f"),
    "perplexity": ("perplexity", ".1f"), "codebook_usage": ("codebook usage", ".3f"),
}


def _load_runs(run_dirs: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {d} a finished `daamflow vqvae train` output folder?")
        runs.append({**json.loads(path.read_text()), "dir": Path(d)})
    reference = runs[0]["config"]
    for run in runs[1:]:  # averaging or comparing runs trained differently would be meaningless
        diff = sorted(k for k in reference if run["config"].get(k) != reference[k])
        if diff:
            raise ValueError(f"{run['dir']} differs from {runs[0]['dir']} in hyper-parameter(s) {diff}")
    return runs


def _by_variant(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each variant's runs sorted by seed, in the order of ``VARIANTS``; variants without runs left out."""
    groups = {v: sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"]) for v in VARIANTS}
    return {v: group for v, group in groups.items() if group}


def summarize_runs(run_dirs: list[Path | str]) -> pd.DataFrame:
    """One row per variant: seeds, parameter counts, and mean/std (population, ddof=0) of every held-out metric.

    Returns a pandas DataFrame (columns ``<metric>_mean``, ``<metric>_std``).
    """
    runs = _load_runs([Path(d) for d in run_dirs])
    rows = []
    for variant, group in _by_variant(runs).items():
        row: dict[str, Any] = {
            "variant": variant, "n_runs": len(group), "seeds": " ".join(str(r["seed"]) for r in group),
            "params_total": group[0]["parameters"]["total"], "params_daam": group[0]["parameters"]["daam"],
        }
        for key in [*TABLE_METRICS, "wall_time_s"]:
            values = np.array([r["metrics"][key] if key in r["metrics"] else r[key] for r in group], dtype=float)
            row[f"{key}_mean"], row[f"{key}_std"] = values.mean(), values.std(ddof=0)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "variant": df["variant"], "runs": df["n_runs"], "params": df["params_total"].map("{:,}".format),
        "DAAM params": df["params_daam"].map("{:,}".format),
        **{title: [f"{m:{fmt}} ± {s:{fmt}}" for m, s in zip(df[f"{k}_mean"], df[f"{k}_std"])]
           for k, (title, fmt) in TABLE_METRICS.items()},
        "wall time (s)": [f"{m:.1f} ± {s:.1f}" for m, s in zip(df["wall_time_s_mean"], df["wall_time_s_std"])],
    })
    return table.to_markdown(index=False) + "\n\nmean ± population std over seeds; held-out split.\n"


def comparison_grid(run_dirs: list[Path | str], out_png: Path | str) -> None:
    """Originals, then one reconstruction row per variant (its lowest-seed run), for the same held-out images."""
    runs = _load_runs([Path(d) for d in run_dirs])
    rows, originals = [], None
    for variant, group in _by_variant(runs).items():
        with np.load(group[0]["dir"] / "samples.npz") as samples:
            if originals is None:
                originals = samples["originals"]
            elif not np.array_equal(originals, samples["originals"]):
                raise ValueError(f"{group[0]['dir']} holds different held-out images than the other variant's run")
            rows.append((f"{variant} (seed {group[0]['seed']})", samples["reconstructions"]))
    plot_grid(Path(out_png), originals, rows)


def write_table(run_dirs: list[Path | str], out_csv: Path | str, out_md: Path | str,
                grid_out: Path | str | None = None) -> pd.DataFrame:
    """Write the plain-vs-DAAM table as CSV (numbers) and Markdown (mean ± std); optionally the comparison grid."""
    df = summarize_runs(run_dirs)
    for path in (out_csv, out_md, grid_out):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_csv(out_csv, df)
    write_text(out_md, markdown(df))
    if grid_out is not None:
        comparison_grid(run_dirs, grid_out)
    return df
