# Names from daamflow.catalog, paths from daamflow.targets' templates, and the helpers the rules share; the logic
# lives in the package (daamflow.targets, daamflow.config).
import json
import re

from daamflow import catalog, targets
from daamflow.config import settings_json, train_settings

DATASETS = list(config["datasets"])
ENCODERS = list(config["encoders"])
PAPER_DATASETS = targets.paper_datasets(config)
PAPER_PAIRS = catalog.format_pairs(PAPER_DATASETS)
RUN = "{dataset}_{encoder}_{protocol}_{method}"  # a run's log and benchmark name


def alternatives(names):
    return "|".join(map(re.escape, names))


wildcard_constraints:
    dataset=alternatives(DATASETS),
    encoder=alternatives(ENCODERS),
    protocol=alternatives(catalog.PROTOCOLS),
    method=f"{alternatives(catalog.HEAD_METHODS)}|{catalog.LORA_PATTERN}",
    selection=alternatives(catalog.SELECTIONS),


def out(template, **fields):
    """A path template of daamflow.targets under the results folder; fields not given stay wildcards."""
    return targets.path(template, config, **fields)


def log_file(stage, name):
    return targets.log(config, stage, name)


def benchmark_file(stage, name):
    return targets.benchmark(config, stage, name)


def table(template, caption, category, subcategory=None, label=None, **fields):
    """csv, md and tex of a table; the csv goes into `snakemake --report` with report/<caption>.rst, labelled
    ``label`` (default: the table's file name)."""
    csv, *rest = targets.table_files(template, config, **fields)
    labels = {"table": label or os.path.basename(targets.stem(csv))}
    return [report(csv, caption=f"../report/{caption}.rst", category=category, subcategory=subcategory, labels=labels),
            *rest]


def figure(template, caption, subcategory, label, **fields):
    """A figure in `snakemake --report` (category Figures) with report/<caption>.rst."""
    return report(out(template, **fields), caption=f"../report/{caption}.rst", category="Figures",
                  subcategory=subcategory, labels={"figure": label})


def stem(w, output):
    """The --out-table argument of a rule whose first output is a table's csv."""
    return targets.stem(output[0])


def all_targets():
    return targets.all_targets(config)


def features(wildcards):
    """The feature store of a dataset, made by its configured encoder."""
    return targets.feature_files(config, wildcards.dataset, config["datasets"][wildcards.dataset]["encoder"])


def pretrain_data(wildcards):
    """A pretrained tiny encoder's exclusions: the prepared datasets it embeds (their samples stay out of its
    pretraining data); nothing for the other encoders."""
    if "pretrain" not in config["encoders"][wildcards.encoder]:
        return []
    users = [d for d, spec in config["datasets"].items() if spec["encoder"] == wildcards.encoder]
    return [out(targets.MANIFEST, dataset=d) for d in sorted(users)]


def launcher_json():
    """The launcher settings, with submitit's log folder under the results by default."""
    launcher = dict(config["launcher"])
    launcher["log_dir"] = launcher["log_dir"] or out(targets.SUBMITIT_LOGS)
    return json.dumps(launcher, sort_keys=True)


def runs_of(wildcards, method):
    """runs.csv of another method on the same dataset and protocol."""
    return targets.run_table(config, wildcards.dataset, wildcards.protocol, method)


def dataset_resources(stage, mem_mb, runtime):
    """gpu, mem_mb and runtime of a dataset's jobs of ``stage`` from `datasets.<name>.resources.<stage>`, else no GPU
    and the given defaults."""

    def of(key, default):
        return lambda wildcards: config["datasets"][wildcards.dataset]["resources"].get(stage, {}).get(key, default)

    return {"gpu": of("gpu", 0), "mem_mb": of("mem_mb", mem_mb), "runtime": of("runtime", runtime)}


TRAIN_RESOURCES = dataset_resources("train", mem_mb=2000, runtime=60)  # rules train, ablate*, probe
# rules train and ablate*: the feature store, the run folder, the job's settings and the launcher
HEAD_JOB_PARAMS = {
    "store": lambda w, input: os.path.dirname(input.features),
    "out": lambda w, output: os.path.dirname(output.runs),
    "settings": lambda w: settings_json(train_settings(config, w.dataset, w.method, w.protocol)),
    "launcher": launcher_json(),
}
