from daamflow.run.lora_settings import finetune_settings


rule finetune:
    """Fine-tune the encoder with LoRA / LoRA+ adapters and a pooled head on every fold/seed; the run contract."""
    input:
        manifest=out(targets.MANIFEST),
        encoder=out(targets.ENCODER_SPEC),
    output:
        runs=out(targets.RUN_TABLE),
    wildcard_constraints:
        method=catalog.LORA_PATTERN,
    params:
        usage=benchmark_file("finetune", RUN),
        data=lambda w, input: os.path.dirname(input.manifest),
        encoder=lambda w, input: os.path.dirname(input.encoder),
        out=lambda w, output: os.path.dirname(output.runs),
        settings=lambda w: settings_json(finetune_settings(config, w.dataset, w.method, w.protocol)),
        launcher=launcher_json(),
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("finetune", RUN),
    threads: config["threads"]
    priority: 5  # the longest jobs next after the features, so that a run does not end on one with a core idle
    resources:
        **dataset_resources("finetune", mem_mb=4000, runtime=120),
    shell:
        "daamflow --usage {params.usage:q} finetune"
        " --data {params.data:q} --encoder {params.encoder:q} --out {params.out:q}"
        " --settings {params.settings:q} --threads {threads} --launcher {params.launcher:q} > {log:q} 2>&1"
