rule prepare:
    """Prepare a dataset: manifest.csv (id, label, group, split, input), meta.json and the raw inputs."""
    output:
        manifest=out(targets.MANIFEST),
        meta=out(targets.META),
    params:
        usage=benchmark_file("prepare", "{dataset}"),
        out=lambda w, output: os.path.dirname(output.manifest),
        source=lambda w: config["datasets"][w.dataset]["source"],
        options=lambda w: json.dumps(config["datasets"][w.dataset]["options"], sort_keys=True),
        seed=config["seed"],
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("prepare", "{dataset}"),
    # one thread (espeak-ng's clips still synthesise 2-4 at a time, for ~3 s): a 2-thread job starts only when both
    # cores are free, so the prosody prepare, and the WavLM pretraining behind it, waited for the whole fashion
    # branch while one core idled; and the feature roots first, before any head (docs/architecture.md#9-timings)
    threads: 1
    priority: 10
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "daamflow --usage {params.usage:q} prepare --source {params.source:q} --out {params.out:q} --seed {params.seed}"
        " --options {params.options:q} > {log:q} 2>&1"


rule encoder:
    """Make a from_pretrained-loadable encoder folder (an installed package's files, a tiny model, pretrained or not,
    or a hub download)."""
    input:
        exclude=pretrain_data,
    output:
        spec=out(targets.ENCODER_SPEC),
    params:
        usage=benchmark_file("encoder", "{encoder}"),
        out=lambda w, output: os.path.dirname(output.spec),
        spec=lambda w: json.dumps(config["encoders"][w.encoder], sort_keys=True),
        lock=config["encoder_lock"],
        exclude=lambda w, input: ["--exclude-data", *[os.path.dirname(p) for p in input.exclude]] if input.exclude else [],
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("encoder", "{encoder}"),
    priority: 10
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "daamflow --usage {params.usage:q} encoder"
        " --spec {params.spec:q} --out {params.out:q} --lock {params.lock:q} {params.exclude:q}"
        " > {log:q} 2>&1"
