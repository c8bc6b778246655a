rule prepare:
    """Prepare a dataset: manifest.csv (id, label, group, split, input), meta.json and the raw inputs."""
    output:
        manifest=out(targets.MANIFEST),
        meta=out(targets.META),
    params:
        out=lambda w, output: os.path.dirname(output.manifest),
        source=lambda w: config["datasets"][w.dataset]["source"],
        options=lambda w: json.dumps(config["datasets"][w.dataset]["options"], sort_keys=True),
        seed=config["seed"],
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("prepare", "{dataset}"),
    benchmark:
        benchmark_file("prepare", "{dataset}")
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "daamflow prepare --source {params.source:q} --out {params.out:q} --seed {params.seed}"
        " --options {params.options:q} > {log:q} 2>&1"


rule encoder:
    """Make a from_pretrained-loadable encoder folder (an installed package's files, a tiny model, or a hub download)."""
    output:
        spec=out(targets.ENCODER_SPEC),
    params:
        out=lambda w, output: os.path.dirname(output.spec),
        spec=lambda w: json.dumps(config["encoders"][w.encoder], sort_keys=True),
        lock=config["encoder_lock"],
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("encoder", "{encoder}"),
    benchmark:
        benchmark_file("encoder", "{encoder}")
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "daamflow encoder --spec {params.spec:q} --out {params.out:q} --lock {params.lock:q} > {log:q} 2>&1"
