# Path templates and target lists only; the logic lives in the package (daamflow.targets, daamflow.config).
import json

from daamflow import targets
from daamflow.config import settings_json, train_settings

R = config["results_dir"]
HEAD_METHODS = targets.HEAD_METHODS
DATASETS = list(config["datasets"])
ENCODERS = list(config["encoders"])
PAPER_DATASETS = targets.paper_datasets(config)
PAPER_PAIRS = [f"{d}={p}" for d, p in PAPER_DATASETS.items()]


wildcard_constraints:
    dataset="|".join(DATASETS),
    encoder="|".join(ENCODERS),
    protocol="paper|clean",
    method="[a-z0-9_]+(@released)?",
    selection="high|low|random",


def all_targets():
    return targets.all_targets(config)


def features(wildcards):
    """The feature store of a dataset, made by its configured encoder."""
    store = targets.path(targets.FEATURES, config, dataset=wildcards.dataset, encoder=config["datasets"][wildcards.dataset]["encoder"])
    return {name.split(".")[0]: f"{store}/{name}" for name in targets.FEATURE_FILES}


def launcher_json():
    """The launcher settings, with submitit's log folder under the results by default."""
    launcher = dict(config["launcher"])
    launcher["log_dir"] = launcher["log_dir"] or f"{R}/logs/submitit"
    return json.dumps(launcher, sort_keys=True)


def runs_of(wildcards, method):
    """runs.csv of another method on the same dataset and protocol."""
    return targets.run_table(config, wildcards.dataset, wildcards.protocol, method)


def dataset_resource(stage, key, default):
    """A resource of a dataset's embed/train jobs from `datasets.<name>.resources.<stage>`, else the default."""
    return lambda wildcards: config["datasets"][wildcards.dataset]["resources"].get(stage, {}).get(key, default)
