rule embed:
    """Encode a prepared dataset with its frozen encoder: per-layer masked mean pooling into the feature store."""
    input:
        manifest=f"{R}/data/{{dataset}}/manifest.csv",
        encoder=f"{R}/encoders/{{encoder}}/encoder.json",
    output:
        features=f"{R}/features/{{dataset}}/{{encoder}}/features.npy",
        index=f"{R}/features/{{dataset}}/{{encoder}}/index.csv",
        manifest=f"{R}/features/{{dataset}}/{{encoder}}/manifest.json",
    params:
        data=lambda w, input: os.path.dirname(input.manifest),
        encoder=lambda w, input: os.path.dirname(input.encoder),
        out=lambda w, output: os.path.dirname(output.features),
        batch_size=lambda w: config["datasets"][w.dataset]["embed"].get("batch_size", config["embed"]["batch_size"]),
        layers=config["embed"]["layers"],
        device=config["embed"]["device"],
        dtype=config["embed"]["dtype"],
        max_length=lambda w: (
            f"--max-length {config['datasets'][w.dataset]['embed']['max_length']}"
            if config["datasets"][w.dataset]["embed"].get("max_length")
            else ""
        ),
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/embed/{{dataset}}_{{encoder}}.log",
    benchmark:
        f"{R}/benchmarks/embed/{{dataset}}_{{encoder}}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    # worker count and progress-record size do not change the features: read from config in the command, not params
    # (a changed param would rerun the extraction)
    shell:
        "daamflow embed --data {params.data} --encoder {params.encoder} --out {params.out}"
        " --batch-size {params.batch_size} --layers {params.layers} --device {params.device} {params.max_length}"
        " --dtype {params.dtype} --threads {threads} --no-progress"
        " --num-workers {config[embed][num_workers]} --shard-rows {config[embed][shard_rows]} > {log} 2>&1"
