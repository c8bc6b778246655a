rule embed:
    """Encode a prepared dataset with its frozen encoder: per-layer masked mean pooling into the feature store."""
    input:
        manifest=out(targets.MANIFEST),
        encoder=out(targets.ENCODER_SPEC),
    output:
        **targets.feature_files(config, "{dataset}", "{encoder}"),
    params:
        usage=benchmark_file("embed", "{dataset}_{encoder}"),
        data=lambda w, input: os.path.dirname(input.manifest),
        encoder=lambda w, input: os.path.dirname(input.encoder),
        out=lambda w, output: os.path.dirname(output.features),
        batch_size=lambda w: config["datasets"][w.dataset]["embed"].get("batch_size", config["embed"]["batch_size"]),
        layers=config["embed"]["layers"],
        device=config["embed"]["device"],
        dtype=config["embed"]["dtype"],
        max_length=lambda w: (
            ["--max-length", config["datasets"][w.dataset]["embed"]["max_length"]]
            if config["datasets"][w.dataset]["embed"].get("max_length")
            else []
        ),
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("embed", "{dataset}_{encoder}"),
    threads: config["threads"]
    priority: 10  # with prepare and encoder: every dataset's features before the heads (rules/data.smk)
    resources:
        **dataset_resources("embed", mem_mb=4000, runtime=60),
        # decoding processes beside the encoder: a resource, not a param, as they do not change the features (a
        # changed param would rerun the whole extraction)
        embed_workers=config["embed"]["num_workers"],
    shell:
        "daamflow --usage {params.usage:q} embed"
        " --data {params.data:q} --encoder {params.encoder:q} --out {params.out:q}"
        " --batch-size {params.batch_size} --layers {params.layers:q} --device {params.device:q} {params.max_length:q}"
        " --dtype {params.dtype:q} --threads {threads} --num-workers {resources.embed_workers} --no-progress"
        " > {log:q} 2>&1"
