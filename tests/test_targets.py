"""daamflow.targets: the path templates the rules and the target lists share, and its helpers."""
import yaml

from daamflow import targets
from test_workflow import MICRO, ROOT

CONFIG = {"results_dir": "res"}


def test_path_fills_what_it_is_given_and_leaves_the_other_wildcards():
    assert targets.path(targets.RUN_TABLE, CONFIG) == "res/runs/{dataset}/{encoder}/{protocol}/{method}/runs.csv"
    assert targets.path(targets.RUN_TABLE, CONFIG, method="{method}@{selection}", dataset="wordnet") == (
        "res/runs/wordnet/{encoder}/{protocol}/{method}@{selection}/runs.csv"
    )
    # a value is inserted as it is: a results folder with spaces and shell characters stays literal
    hostile = {"results_dir": "out dir $(touch x)"}
    assert targets.path(targets.SUMMARY_MD, hostile) == "out dir $(touch x)/tables/summary.md"


def test_log_and_benchmark_of_one_job():
    assert targets.log(CONFIG, "train", "{dataset}_{method}") == "res/logs/train/{dataset}_{method}.log"
    assert targets.benchmark(CONFIG, "train", "wordnet_mha") == "res/benchmarks/train/wordnet_mha.tsv"


def test_table_files_are_the_csv_md_tex_triple_and_stem_inverts_them():
    files = targets.table_files(targets.IF_PROBE_TABLE, CONFIG, dataset="wordnet")
    assert files == [f"res/tables/wordnet_{{protocol}}_if_probe.{ext}" for ext in ("csv", "md", "tex")]
    assert targets.stem(files[0]) == "res/tables/wordnet_{protocol}_if_probe"
    assert targets.stem("out dir.x/tables/claims.csv") == "out dir.x/tables/claims"


def test_feature_files_by_name():
    assert targets.feature_files(CONFIG, "wordnet", "minilm") == {
        "features": "res/features/wordnet/minilm/features.npy",
        "index": "res/features/wordnet/minilm/index.csv",
        "manifest": "res/features/wordnet/minilm/manifest.json",
    }


def test_micro_targets():
    config = {**yaml.safe_load(MICRO.read_text()), "results_dir": "res"}
    datasets, protocols = list(config["datasets"]), config["protocols"]
    wanted = targets.all_targets(config)
    assert wanted[:2] == ["res/tables/summary.md", "res/tables/summary.json"]
    assert len(wanted) == len(set(wanted)) == 2 + len(datasets) * (3 * (len(protocols) + 1) + 1)
    assert "res/tables/wordnet_protocols.tex" in wanted and "res/figures/wordnet_accuracy.png" in wanted
    encoder = config["datasets"]["wordnet"]["encoder"]
    assert targets.run_table(config, "wordnet", "clean", "mha") == f"res/runs/wordnet/{encoder}/clean/mha/runs.csv"
    assert len(targets.run_tables(config)) == len(datasets) * len(protocols) * len(config["methods"])


def test_default_grid_importance_and_report_tables():
    config = {**yaml.safe_load((ROOT / "config/config.yaml").read_text()), "results_dir": "res"}
    imp = config["importance"]
    assert imp["enabled"]
    dataset = next(iter(config["datasets"]))
    files = targets.importance_targets(config, dataset)
    assert files[:3] == [f"res/tables/{dataset}_ablation.{ext}" for ext in ("csv", "md", "tex")]
    assert f"res/figures/{dataset}_{config['protocols'][0]}_if_heatmap.png" in files
    labels = {p.split("/")[-2] for p in targets.ablation_run_tables(config, dataset)}
    assert labels == {f"{m}{s}" for m in imp["ablation_methods"] for s in ("", "@high", "@low", "@random")}
    # the DAAM runs with learned δ/ξ only
    assert {p.split("/")[-2] for p in targets.daam_run_tables(config)} <= {"daam_v1", "daam_v2", "gqdaam"}
    report = targets.report_tables(config)
    assert "res/tables/claims.json" in report and "res/tables/quirks.tex" in report
    assert all(f"res/tables/{d}_{p}_vs_paper.csv" in report for d in targets.paper_datasets(config)
               for p in config["protocols"])
    assert targets.other_if_source({"importance": {"if_source": "selected"}}) == "all_epochs"
