rule train:
    """Train one head on every fold/seed of one (dataset, encoder, protocol, method); writes the run contract."""
    input:
        unpack(features),
    output:
        runs=f"{R}/runs/{{dataset}}/{{encoder}}/{{protocol}}/{{method}}/runs.csv",
    wildcard_constraints:
        method="|".join(HEAD_METHODS),  # the LoRA methods go to rule finetune
    params:
        store=lambda w, input: os.path.dirname(input.features),
        out=lambda w, output: os.path.dirname(output.runs),
        settings=lambda w: settings_json(train_settings(config, w.dataset, w.method, w.protocol)),
        launcher=launcher_json(),
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/train/{{dataset}}_{{encoder}}_{{protocol}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{dataset}}_{{encoder}}_{{protocol}}_{{method}}.tsv"
    threads: config["threads"]
    resources:
        gpu=dataset_resource("train", "gpu", 0),
        mem_mb=dataset_resource("train", "mem_mb", 2000),
        runtime=dataset_resource("train", "runtime", 60),
    shell:
        "daamflow train --features {params.store:q} --out {params.out:q} --settings {params.settings:q}"
        " --threads {threads} --launcher {params.launcher:q} > {log:q} 2>&1"
