"""daamflow: regenerate the results of 'Density Adaptive Attention is All You Need' (arXiv 2401.11143).

    snakemake --cores 2                                    # the embedded default (config/config.yaml), CPU, minutes
    snakemake --cores 8 --configfile config/paper.yaml     # the paper's grid (GPUs, real data)
    snakemake --profile slurm --configfile config/paper.yaml   # the same on a SLURM cluster (profiles/slurm)
    snakemake --cores 2 results/tables/<name>.md           # one table and what it needs
"""
import os
import sys

from daamflow.config import validate_config
from daamflow.preflight import check_resources
from daamflow.cli.profiles import precedence_warnings
from daamflow.cli.warm import Server

from snakemake.logging import logger
from snakemake.utils import min_version

min_version("8.0")


# A --configfile replaces the embedded default instead of being merged into it (Snakemake merges nested keys,
# which would mix the demo datasets into the paper's grid).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# `snakemake --report results/report.html`: this description, then every output flagged with report() in rules/.
report: "report/workflow.rst"


# Snakemake lets a profile's `config:` override --configfile values, and a command-line --config drop a profile's
# `config:`, without a word: say so.
for warning in precedence_warnings(sys.argv[1:], os.environ, workflow.config_settings.configfiles, workflow.config_settings.config):
    logger.warning(f"daamflow: {warning}")


# Fails before any job runs, naming every bad key; the same schema as config/schema.yaml, defaults filled in.
validate_config(config)
# ... and every missing local dataset folder, file, encoder folder or program (not only when its job starts)
check_resources(config)


# downloads and data preparation stay on the login node under a cluster profile (compute nodes often lack internet)
localrules:
    prepare,
    encoder,


# Local jobs fork from one process that has imported torch, transformers and peft (`warm_start`; docs/architecture.md#9-timings)
WARM = Server()


onstart:
    WARM.start(config["warm_start"], workflow.local_exec, config["threads"], log_file("warm", "server"))


onsuccess:
    WARM.stop()


onerror:
    WARM.stop()


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/embed.smk"
include: "rules/train.smk"
include: "rules/finetune.smk"
include: "rules/importance.smk"
include: "rules/vqvae.smk"
include: "rules/report.smk"


rule all:
    """Every table and figure of the configured grid."""
    input:
        all_targets(),
    default_target: True
