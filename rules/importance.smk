# the IF source the configured one is compared with (importance.compare_if_sources), else None
OTHER_SOURCE = targets.other_if_source(config) if config["importance"].get("compare_if_sources") else None


rule importance_map:
    """IF maps of the IF method's runs (per fold, mean ± std), Fig. 2 heatmap, Fig. 3 shares, and each fold's layers
    for the ablation (under clean from the fold's own run only: leak-free)."""
    input:
        runs=lambda w: runs_of(w, config["importance"]["method"]),
    output:
        per_layer=out(targets.IMPORTANCE, file="per_layer.csv"),
        layers=out(targets.IMPORTANCE, file="layers.json"),
        other=[out(targets.IMPORTANCE, file=f"layers_{OTHER_SOURCE}.json")] if OTHER_SOURCE else [],
        heatmap=figure(targets.IF_HEATMAP, "if_figures", "{dataset}", "IF heatmap ({protocol})"),
        bars=figure(targets.IF_LAYERS, "if_figures", "{dataset}", "IF per layer ({protocol})"),
    params:
        usage=benchmark_file("importance", "{dataset}_{protocol}_map"),
        runs=lambda w, input: os.path.dirname(input.runs),
        out=lambda w, output: os.path.dirname(output.layers),
        k=lambda w: targets.importance_k(config, w.dataset),
        seed=config["importance"].get("seed", 0),
        source=config["importance"]["if_source"],
        other=["--other-source", OTHER_SOURCE] if OTHER_SOURCE else [],
        title=lambda w: f"{w.dataset} ({w.protocol}, {config['importance']['method']})",
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("importance", "{dataset}_{protocol}_map"),
    resources:
        mem_mb=2000,
    shell:
        "daamflow --usage {params.usage:q} importance map"
        " --runs {params.runs:q} --out {params.out:q} --k {params.k} --seed {params.seed}"
        " --protocol {wildcards.protocol} --if-source {params.source} {params.other}"
        " --heatmap {output.heatmap:q} --bars {output.bars:q} --title {params.title:q} > {log:q} 2>&1"


rule ablate:
    """Retrain a method on the high-IF, low-IF or random layers only (all folds/seeds); labelled <method>@<selection>."""
    input:
        unpack(features),
        layers=out(targets.IMPORTANCE, file="layers.json"),
    output:
        runs=out(targets.RUN_TABLE, method="{method}@{selection}"),
    params:
        usage=benchmark_file("ablate", f"{RUN}@{{selection}}"),
        **HEAD_JOB_PARAMS,
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("ablate", f"{RUN}@{{selection}}"),
    threads: config["threads"]
    resources:
        **TRAIN_RESOURCES,
    shell:
        "daamflow --usage {params.usage:q} train"
        " --features {params.store:q} --out {params.out:q} --settings {params.settings:q}"
        " --layers-from {input.layers:q} --selection {wildcards.selection}"
        " --threads {threads} --launcher {params.launcher:q} > {log:q} 2>&1"


rule ablate_if_source:
    """Retrain a method on the high-IF layers of the other IF source (importance.compare_if_sources), labelled
    <method>@high_if_<source>: the all-epoch IF's effect in the quirk-effect table."""
    input:
        unpack(features),
        layers=out(targets.IMPORTANCE, file="layers_{source}.json"),
    output:
        runs=out(targets.RUN_TABLE, method="{method}@high_if_{source}"),
    params:
        usage=benchmark_file("ablate", f"{RUN}@high_if_{{source}}"),
        **HEAD_JOB_PARAMS,
    wildcard_constraints:
        source=alternatives(catalog.IF_SOURCES),
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("ablate", f"{RUN}@high_if_{{source}}"),
    threads: config["threads"]
    resources:
        **TRAIN_RESOURCES,
    shell:
        "daamflow --usage {params.usage:q} train"
        " --features {params.store:q} --out {params.out:q} --settings {params.settings:q}"
        " --layers-from {input.layers:q} --selection high --label {wildcards.method}@high_if_{wildcards.source}"
        " --threads {threads} --launcher {params.launcher:q} > {log:q} 2>&1"


rule ablation_table:
    """The paper's IF-ablation table: each ablation method on the high-IF / low-IF / random layers and on all layers."""
    input:
        runs=lambda w: targets.ablation_run_tables(config, w.dataset),
        layers=[out(targets.IMPORTANCE, protocol=p, file="layers.json") for p in config["protocols"]],
    output:
        tables=table(targets.ABLATION_TABLE, "ablation", "Tables", "{dataset}"),
    params:
        usage=benchmark_file("importance", "{dataset}_ablation"),
        stem=stem,
        layers=lambda w, input: [f"{p}={f}" for p, f in zip(config["protocols"], input.layers)],
        paper=lambda w: ["--paper-dataset", PAPER_DATASETS[w.dataset]] if w.dataset in PAPER_DATASETS else [],
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("importance", "{dataset}_ablation"),
    shell:
        "daamflow --usage {params.usage:q} importance ablation"
        " --runs {input.runs:q} --layers {params.layers:q} --out-table {params.stem:q}"
        " --title {wildcards.dataset:q} {params.paper:q} > {log:q} 2>&1"


rule probe:
    """A converged linear probe (logistic regression) on each single layer, every fold/seed: the per-layer curve."""
    input:
        unpack(features),
    output:
        probe=out(targets.PROBE),
    params:
        usage=benchmark_file("probe", "{dataset}_{protocol}"),
        store=lambda w, input: os.path.dirname(input.features),
        out=lambda w, output: os.path.dirname(output.probe),
        settings=lambda w: settings_json(train_settings(config, w.dataset, "linear", w.protocol)),
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("probe", "{dataset}_{protocol}"),
    threads: config["threads"]
    resources:
        **TRAIN_RESOURCES,
    shell:
        "daamflow --usage {params.usage:q} importance probe"
        " --features {params.store:q} --settings {params.settings:q} --out {params.out:q} --threads {threads}"
        " > {log:q} 2>&1"


rule correlate:
    """Per-layer IF against per-layer probe accuracy (Spearman per fold and mean), with the weighted-sum weights."""
    input:
        per_layer=out(targets.IMPORTANCE, file="per_layer.csv"),
        probe=out(targets.PROBE),
        weights=lambda w: runs_of(w, "weighted_sum") if "weighted_sum" in config["methods"] else [],
    output:
        tables=table(targets.IF_PROBE_TABLE, "if_probe", "Tables", "{dataset}"),
        figure=figure(targets.IF_PROBE_FIGURE, "if_probe", "{dataset}", "IF vs probe accuracy ({protocol})"),
    params:
        usage=benchmark_file("importance", "{dataset}_{protocol}_correlate"),
        weights=lambda w, input: ["--weights-runs", os.path.dirname(input.weights)] if input.weights else [],
        stem=stem,
        title=lambda w: f"{w.dataset} ({w.protocol})",
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("importance", "{dataset}_{protocol}_correlate"),
    shell:
        "daamflow --usage {params.usage:q} importance correlate"
        " --per-layer {input.per_layer:q} --probes {input.probe:q} {params.weights:q}"
        " --out-table {params.stem:q} --figure {output.figure:q} --title {params.title:q} > {log:q} 2>&1"


rule learned_parameters:
    """The ranges of the learned δ (mean offset) and ξ (scaled variance) of every DAAM run."""
    input:
        runs=targets.daam_run_tables(config),
    output:
        tables=table(targets.LEARNED_TABLE, "learned_parameters", "Paper tables", "learned parameters",
                     "learned δ/ξ ranges"),
    params:
        usage=benchmark_file("importance", "learned_parameters"),
        runs=lambda w, input: [os.path.dirname(p) for p in input.runs],
        stem=stem,
        pairs=PAPER_PAIRS,
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("importance", "learned_parameters"),
    shell:
        "daamflow --usage {params.usage:q} importance ranges"
        " --runs {params.runs:q} --out-table {params.stem:q} --paper-datasets {params.pairs:q}"
        " > {log:q} 2>&1"
