"""Load and validate a daamflow config; derive the settings each stage receives.

The schema (``schema.yaml`` in this package; ``config/schema.yaml`` links to it) rejects unknown keys and fills
defaults. Errors name the offending key path and what was expected, before any job runs. The per-stage settings are
plain JSON-able dicts: Snakemake passes them to the CLI as rule ``params``, so a changed setting reruns exactly the
jobs it affects.
"""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from daamflow.catalog import SOURCE_MODALITY

# The paper's hyper-parameters (docs/paper-notes.md#5-training-hyper-parameters). Where paper and released code
# disagree the comment says which is used.
PAPER_HYPER: dict[str, Any] = {
    "epochs": 35,
    "lr": 1e-4,
    "weight_decay": 0.01,  # AdamW's default, as the released code (the paper's text says 0.1)
    "loss": "cross_entropy",
    "focal_alpha": 0.25,
    "focal_gamma": 2.5,
    "scheduler_factor": 0.1,
    "scheduler_patience": 10,
    "grad_clip": None,  # the released code clips scaled gradients at 1000, which never binds
    "dev_fraction": 0.2,
    "amp": "auto",  # bfloat16 autocast on a GPU only (schema: hyper.amp)
}
PAPER_HYPER_BY_MODALITY: dict[str, dict[str, Any]] = {
    "audio": {"batch_size": 8, "loss": "focal"},
    "image": {"batch_size": 32},  # lr 1e-4 as the paper; the released CIFAR-100 code used 1e-5
    "text": {"batch_size": 32, "lr": 5e-5},
}

ENCODER_REQUIRED = {"package": ["package"], "tiny": ["arch"], "hub": ["id"]}
INFER_ROWS = 200  # rows (files) of a table (folder) read to infer its modality while the DAG is built


# which evaluation source the pretraining of a tiny arch can keep its data apart from (daamflow.data.pretrain)
PRETRAIN_SOURCES = {"beit": ("mim", "fashion_mnist"), "wavlm": ("hubert", "espeak_prosody")}


def _pretrain_problems(config: dict, name: str, enc: dict) -> list[str]:
    """A pretrain block needs a tiny beit/wavlm, its own objective, and datasets whose samples it can leave out."""
    if enc["kind"] != "tiny" or enc.get("arch") not in PRETRAIN_SOURCES:
        return [f"  - encoders.{name}.pretrain: only tiny beit and wavlm encoders can be pretrained"]
    objective, source = PRETRAIN_SOURCES[enc["arch"]]
    problems = []
    if enc["pretrain"].get("objective", objective) != objective:
        problems.append(f"  - encoders.{name}.pretrain.objective: a tiny {enc['arch']} pretrains with {objective}")
    for dataset, ds in config["datasets"].items():
        if ds["encoder"] == name and ds["source"] != source:
            problems.append(f"  - datasets.{dataset}: source {ds['source']} cannot be kept apart from the pretraining "
                            f"data of encoder {name} (it pretrains on {source} data); use another encoder")
    return problems


class ConfigError(ValueError):
    """A config that does not match the schema or refers to something that does not exist."""


def schema() -> dict:
    return yaml.safe_load(resources.files("daamflow").joinpath("schema.yaml").read_text())


def _validator_with_defaults(schema_doc: dict):
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema_)

    cls = jsonschema.validators.extend(base, {"properties": set_defaults})
    return cls(schema_doc)


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _coerce_strings(value: Any, node: dict, root: dict) -> Any:
    """Give ``value`` the scalar types ``node`` asks for where Snakemake handed strings over.

    ``--config key=value`` and a profile's ``config:`` reach the config as strings ('1', 'True', 'None'); a string
    becomes int/float/bool/None only where the schema does not accept a string there (``None``/``null`` also where
    it does and accepts null, e.g. ``partition``).
    """
    while isinstance(node, dict) and "$ref" in node:  # local references only ("#/$defs/...")
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    if isinstance(value, dict):
        props, extra = node.get("properties", {}), node.get("additionalProperties")
        for key, sub in value.items():
            schema_node = props.get(key, extra if isinstance(extra, dict) else None)
            if schema_node is not None:
                value[key] = _coerce_strings(sub, schema_node, root)
        return value
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_coerce_strings(v, node["items"], root) for v in value]
    if not isinstance(value, str):
        return value
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    text = value.strip()
    if "null" in types and text in ("None", "null", "~"):
        return None
    if "string" in types or not types:
        return value
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    for name, cast in (("integer", int), ("number", float)):
        if name in types:
            try:
                return cast(text)
            except ValueError:
                pass
    return value


def validate_config(config: dict) -> dict:
    """Validate ``config`` in place (defaults filled) and return it; raise ConfigError naming every bad key."""
    schema_doc = schema()
    _coerce_strings(config, schema_doc, schema_doc)
    validator = _validator_with_defaults(schema_doc)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for e in errors:
            hint = e.schema.get("description", "")
            lines.append(f"  - {_path(e)}: {e.message}" + (f" ({hint})" if hint and e.validator != "additionalProperties" else ""))
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    problems = []
    for name, ds in config["datasets"].items():
        if ds["encoder"] not in config["encoders"]:
            problems.append(
                f"  - datasets.{name}.encoder: '{ds['encoder']}' is not a key of `encoders` "
                f"(known: {', '.join(config['encoders'])})"
            )
        if SOURCE_MODALITY[ds["source"]] is None:
            problems += _own_data(name, ds)
        else:
            ds.setdefault("modality", SOURCE_MODALITY[ds["source"]])
            if ds["evaluation"]["scheme"] == "auto":
                problems.append(f"  - datasets.{name}.evaluation.scheme: auto reads the data, for the table and "
                                f"folder sources only; {ds['source']} takes kfold or seeds")
    for name, enc in config["encoders"].items():
        for key in ENCODER_REQUIRED[enc["kind"]]:
            if key not in enc:
                problems.append(f"  - encoders.{name}.{key}: required for kind '{enc['kind']}'")
        if "pretrain" in enc:
            problems += _pretrain_problems(config, name, enc)
    imp = config.get("importance", {})
    if imp.get("enabled"):
        for key, methods in [("method", [imp["method"]]), ("ablation_methods", imp["ablation_methods"])]:
            missing = [m for m in methods if m not in config["methods"]]
            if missing:
                problems.append(f"  - importance.{key}: {missing} must also be listed in `methods` (their full runs are needed)")
        for name in imp.get("k_per_dataset", {}):
            if name not in config["datasets"]:
                problems.append(f"  - importance.k_per_dataset.{name}: not a dataset of this config")
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(problems))
    return config


def _own_data(name: str, ds: dict) -> list[str]:
    """Resolve a table/folder dataset in place: its modality (declared, else inferred from the data) and an ``auto``
    evaluation scheme (seeds when the data gives a train/test split, else kfold), both handed to the prepare step
    through the options (``modality``, and ``folds``: the sample count every class needs)."""
    from daamflow.data.datasets import GENERIC

    module, options, evaluation, key = GENERIC[ds["source"]], ds["options"], ds["evaluation"], f"datasets.{name}"
    declared = {ds.get("modality"), options.get("modality")} - {None}
    if len(declared) > 1:
        return [f"  - {key}.modality: {ds['modality']!r} but options.modality is {options['modality']!r}"]
    try:
        modality = declared.pop() if declared else module.infer_modality(options, sample=INFER_ROWS)
        split = module.has_split(options) if evaluation["scheme"] != "kfold" else False
    except (OSError, ValueError, ImportError) as err:
        return [f"  - {key}.options: {err} (the data is read to infer what is not declared: `modality`, "
                f"evaluation.scheme auto)"]
    if evaluation["scheme"] == "auto":
        evaluation["scheme"] = "seeds" if split else "kfold"
    elif evaluation["scheme"] == "seeds" and not split:
        return [f"  - {key}.evaluation.scheme: seeds needs a train/test split, which the data does not give "
                f"(table: option split; folder: train/ and test/ levels); use kfold or auto"]
    folds = evaluation["folds"] if evaluation["scheme"] == "kfold" else None
    if options.get("folds") not in (None, folds):
        return [f"  - {key}.options.folds: {options['folds']} but evaluation.folds is {folds}; set evaluation.folds"]
    ds["modality"] = options["modality"] = modality
    options["folds"] = folds
    return []


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists() or path.is_dir():  # a pipe is fine: `daamflow config /dev/stdin`, `<(...)`
        raise ConfigError(f"config file not found: {path}")
    with path.open() as fh:
        config = yaml.safe_load(fh) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(config).__name__}")
    return validate_config(config)


def training_hyper(config: dict, dataset: str) -> dict:
    """Hyper-parameters for one dataset: paper defaults < modality < config defaults < config modality < dataset."""
    ds = config["datasets"][dataset]
    modality = ds["modality"]
    hyper = {**PAPER_HYPER, **PAPER_HYPER_BY_MODALITY[modality]}
    training = config.get("training", {})
    hyper.update(training.get("defaults", {}))
    hyper.update(training.get("by_modality", {}).get(modality, {}))
    hyper.update(ds.get("training", {}))
    return hyper


def train_settings(config: dict, dataset: str, method: str, protocol: str) -> dict:
    """Everything one `daamflow train` job needs besides its paths; hashed into every run it writes."""
    ds = config["datasets"][dataset]
    options = {**config.get("model", {}), **config.get("method_options", {}).get(method, {})}
    return {
        "dataset": dataset,
        "encoder": ds["encoder"],
        "method": method,
        "protocol": protocol,
        "seed": config["seed"],
        "evaluation": ds["evaluation"],
        "hyper": training_hyper(config, dataset),
        "model_options": options,
    }


def settings_json(settings: dict) -> str:
    """Canonical JSON (sorted keys): the same settings always give the same string and hash."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def read_settings(value: str) -> dict:
    """Parse a `--settings` argument: inline JSON, or a path to a JSON/YAML file."""
    text = value.strip()
    if not text.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"--settings: neither inline JSON nor an existing file: {value!r}")
        text = path.read_text()
    try:  # JSON first: YAML 1.1 reads a float like 5e-05 (no dot) as a string
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--settings: not valid JSON/YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("--settings: expected a mapping")
    return data
