"""The catalog is the one place domain names are defined: the schema, the adapters and the registry agree with it."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daamflow import catalog

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/schema.yaml").read_text())


def _dataset_schema() -> dict:
    return SCHEMA["properties"]["datasets"]["additionalProperties"]["properties"]


def test_catalog_imports_without_torch_or_pandas():
    code = "import sys, daamflow.catalog; print(sorted(m for m in ('torch', 'pandas', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_source_has_an_adapter_and_the_schema_knows_it():
    from daamflow.data.datasets import SOURCES

    assert set(catalog.SOURCE_MODALITY) == set(SOURCES)
    assert set(_dataset_schema()["source"]["enum"]) == set(catalog.SOURCE_MODALITY)
    fixed = set(catalog.SOURCE_MODALITY.values()) - {None}  # None: the table/folder sources, declared or inferred
    assert set(_dataset_schema()["modality"]["enum"]) == set(catalog.MODALITIES) == fixed
    assert set(_dataset_schema()["paper_dataset"]["enum"]) == set(catalog.PAPER_DATASETS)


def test_schema_methods_are_catalog_methods():
    names = SCHEMA["$defs"]["method_name"]["enum"]
    heads = [n for n in names if catalog.is_head(n)]
    assert set(heads) == set(catalog.HEAD_METHODS)
    assert all(catalog.is_lora(n) for n in set(names) - set(heads))
    assert set(catalog.LORA_METHODS) <= set(names)
    assert set(SCHEMA["properties"]["protocols"]["items"]["enum"]) == set(catalog.PROTOCOLS)


def test_registry_builds_every_catalog_head():
    from daamflow.models.heads import build_model

    for method in catalog.HEAD_METHODS:
        model = build_model(method, 4, 8, 3, conv_channels=4)
        assert sum(p.numel() for p in model.parameters()) > 0, method


def test_families_are_methods():
    for family in (catalog.DAAM_FAMILY, catalog.MAIN_DAAM, catalog.LEARNED_GAUSSIANS, catalog.BEST_LORA):
        assert set(family) <= set(catalog.METHOD_ORDER)
    assert set(catalog.MAIN_DAAM) <= set(catalog.DAAM_FAMILY)


def test_labels_and_order():
    assert catalog.base("daam_v1@high") == "daam_v1" and catalog.variant("daam_v1@high") == "high"
    assert catalog.base("mha") == "mha" and catalog.variant("mha") == ""
    assert catalog.label("mha", "released") == "mha@released" and catalog.label("mha", "") == "mha"
    assert catalog.is_lora("loraplus_r16@released") and not catalog.is_lora("lora_r0") and not catalog.is_lora("mha")
    assert catalog.order(["mixture", "zzz", "daam_v1@high", "linear", "daam_v1"]) == [
        "linear", "daam_v1", "mixture", "daam_v1@high", "zzz"]


def test_pairs_round_trip_and_bad_items_are_named():
    pairs = {"wordnet": "agnews", "prosody": "iemocap"}
    assert catalog.parse_pairs(catalog.format_pairs(pairs)) == pairs
    with pytest.raises(ValueError, match=re.escape("'wordnet:agnews'")):
        catalog.parse_pairs(["wordnet:agnews"])
