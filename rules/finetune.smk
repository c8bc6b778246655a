from daamflow.run.finetune import METHOD_PATTERN, finetune_settings


rule finetune:
    """Fine-tune the encoder with LoRA / LoRA+ adapters and a pooled head on every fold/seed; the run contract."""
    input:
        manifest=f"{R}/data/{{dataset}}/manifest.csv",
        encoder=f"{R}/encoders/{{encoder}}/encoder.json",
    output:
        runs=f"{R}/runs/{{dataset}}/{{encoder}}/{{protocol}}/{{method}}/runs.csv",
    wildcard_constraints:
        method=METHOD_PATTERN,
    params:
        data=lambda w, input: os.path.dirname(input.manifest),
        encoder=lambda w, input: os.path.dirname(input.encoder),
        out=lambda w, output: os.path.dirname(output.runs),
        settings=lambda w: settings_json(finetune_settings(config, w.dataset, w.method, w.protocol)),
        launcher=launcher_json(),
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/finetune/{{dataset}}_{{encoder}}_{{protocol}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{dataset}}_{{encoder}}_{{protocol}}_{{method}}.tsv"
    threads: config["threads"]
    resources:
        gpu=dataset_resource("finetune", "gpu", 0),
        mem_mb=dataset_resource("finetune", "mem_mb", 4000),
        runtime=dataset_resource("finetune", "runtime", 120),
    shell:
        "daamflow finetune --data {params.data:q} --encoder {params.encoder:q} --out {params.out:q}"
        " --settings {params.settings:q} --threads {threads} --launcher {params.launcher:q} > {log:q} 2>&1"
