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
        gpu=dataset_resource("embed", "gpu", 0),
        mem_mb=dataset_resource("embed", "mem_mb", 4000),
        runtime=dataset_resource("embed", "runtime", 60),
        # decoding processes beside the encoder: a resource, not a param, as they do not change the features (a
        # changed param would rerun the whole extraction)
        embed_workers=config["embed"]["num_workers"],
    shell:
        "daamflow embed --data {params.data} --encoder {params.encoder} --out {params.out}"
        " --batch-size {params.batch_size} --layers {params.layers} --device {params.device} {params.max_length}"
        " --dtype {params.dtype} --threads {threads} --num-workers {resources.embed_workers} --no-progress"
        " > {log} 2>&1"
