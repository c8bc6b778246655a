rule train:
    """Train one head on every fold/seed of one (dataset, encoder, protocol, method); writes the run contract."""
    input:
        unpack(features),
    output:
        runs=out(targets.RUN_TABLE),
    wildcard_constraints:
        method=alternatives(catalog.HEAD_METHODS),  # the LoRA methods go to rule finetune
    params:
        usage=benchmark_file("train", RUN),
        **HEAD_JOB_PARAMS,
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("train", RUN),
    threads: config["threads"]
    resources:
        **TRAIN_RESOURCES,
    shell:
        "daamflow --usage {params.usage:q} train"
        " --features {params.store:q} --out {params.out:q} --settings {params.settings:q}"
        " --threads {threads} --launcher {params.launcher:q} > {log:q} 2>&1"
