rule importance_map:
    """IF maps of the IF method's runs (per fold, mean ± std), Fig. 2 heatmap, Fig. 3 shares, and each fold's layers
    for the ablation (under clean from the fold's own run only: leak-free)."""
    input:
        runs=lambda w: runs_of(w, config["importance"]["method"]),
    output:
        per_layer=f"{R}/importance/{{dataset}}/{{protocol}}/per_layer.csv",
        layers=f"{R}/importance/{{dataset}}/{{protocol}}/layers.json",
        other=(
            [f"{R}/importance/{{dataset}}/{{protocol}}/layers_{targets.other_if_source(config)}.json"]
            if config["importance"].get("compare_if_sources")
            else []
        ),
        heatmap=report(
            f"{R}/figures/{{dataset}}_{{protocol}}_if_heatmap.png",
            caption="../report/if_figures.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "IF heatmap ({protocol})"},
        ),
        bars=report(
            f"{R}/figures/{{dataset}}_{{protocol}}_if_layers.png",
            caption="../report/if_figures.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "IF per layer ({protocol})"},
        ),
    params:
        runs=lambda w, input: os.path.dirname(input.runs),
        out=lambda w, output: os.path.dirname(output.layers),
        k=lambda w: targets.importance_k(config, w.dataset),
        seed=config["importance"].get("seed", 0),
        source=config["importance"]["if_source"],
        other=(
            ["--other-source", targets.other_if_source(config)]
            if config["importance"].get("compare_if_sources")
            else []
        ),
        title=lambda w: f"{w.dataset} ({w.protocol}, {config['importance']['method']})",
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/importance/{{dataset}}_{{protocol}}_map.log",
    benchmark:
        f"{R}/benchmarks/importance/{{dataset}}_{{protocol}}_map.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "daamflow importance map --runs {params.runs:q} --out {params.out:q} --k {params.k} --seed {params.seed}"
        " --protocol {wildcards.protocol} --if-source {params.source} {params.other}"
        " --heatmap {output.heatmap:q} --bars {output.bars:q} --title {params.title:q} > {log:q} 2>&1"


rule ablate:
    """Retrain a method on the high-IF, low-IF or random layers only (all folds/seeds); labelled <method>@<selection>."""
    input:
        unpack(features),
        layers=f"{R}/importance/{{dataset}}/{{protocol}}/layers.json",
    output:
        runs=f"{R}/runs/{{dataset}}/{{encoder}}/{{protocol}}/{{method}}@{{selection}}/runs.csv",
    params:
        store=lambda w, input: os.path.dirname(input.features),
        out=lambda w, output: os.path.dirname(output.runs),
        settings=lambda w: settings_json(train_settings(config, w.dataset, w.method, w.protocol)),
        launcher=launcher_json(),
    wildcard_constraints:
        selection="high|low|random",
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/ablate/{{dataset}}_{{encoder}}_{{protocol}}_{{method}}@{{selection}}.log",
    benchmark:
        f"{R}/benchmarks/ablate/{{dataset}}_{{encoder}}_{{protocol}}_{{method}}@{{selection}}.tsv"
    threads: config["threads"]
    resources:
        gpu=dataset_resource("train", "gpu", 0),
        mem_mb=dataset_resource("train", "mem_mb", 2000),
        runtime=dataset_resource("train", "runtime", 60),
    shell:
        "daamflow train --features {params.store:q} --out {params.out:q} --settings {params.settings:q}"
        " --layers-from {input.layers:q} --selection {wildcards.selection}"
        " --threads {threads} --launcher {params.launcher:q} > {log:q} 2>&1"


rule ablate_if_source:
    """Retrain a method on the high-IF layers of the other IF source (importance.compare_if_sources), labelled
    <method>@high_if_<source>: the all-epoch IF's effect in the quirk-effect table."""
    input:
        unpack(features),
        layers=f"{R}/importance/{{dataset}}/{{protocol}}/layers_{{source}}.json",
    output:
        runs=f"{R}/runs/{{dataset}}/{{encoder}}/{{protocol}}/{{method}}@high_if_{{source}}/runs.csv",
    params:
        store=lambda w, input: os.path.dirname(input.features),
        out=lambda w, output: os.path.dirname(output.runs),
        settings=lambda w: settings_json(train_settings(config, w.dataset, w.method, w.protocol)),
        launcher=launcher_json(),
    wildcard_constraints:
        source="selected|all_epochs",
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/ablate/{{dataset}}_{{encoder}}_{{protocol}}_{{method}}@high_if_{{source}}.log",
    benchmark:
        f"{R}/benchmarks/ablate/{{dataset}}_{{encoder}}_{{protocol}}_{{method}}@high_if_{{source}}.tsv"
    threads: config["threads"]
    resources:
        gpu=dataset_resource("train", "gpu", 0),
        mem_mb=dataset_resource("train", "mem_mb", 2000),
        runtime=dataset_resource("train", "runtime", 60),
    shell:
        "daamflow train --features {params.store:q} --out {params.out:q} --settings {params.settings:q}"
        " --layers-from {input.layers:q} --selection high --label {wildcards.method}@high_if_{wildcards.source}"
        " --threads {threads} --launcher {params.launcher:q} > {log:q} 2>&1"


rule ablation_table:
    """The paper's IF-ablation table: each ablation method on the high-IF / low-IF / random layers and on all layers."""
    input:
        runs=lambda w: targets.ablation_run_tables(config, w.dataset),
        layers=expand(f"{R}/importance/{{{{dataset}}}}/{{protocol}}/layers.json", protocol=config["protocols"]),
    output:
        tables=[
            report(
                f"{R}/tables/{{dataset}}_ablation.csv",
                caption="../report/ablation.rst",
                category="Tables",
                subcategory="{dataset}",
                labels={"table": "{dataset}_ablation"},
            ),
            f"{R}/tables/{{dataset}}_ablation.md",
            f"{R}/tables/{{dataset}}_ablation.tex",
        ],
    params:
        stem=lambda w, output: output.tables[0][: -len(".csv")],
        layers=lambda w, input: [f"{p}={f}" for p, f in zip(config["protocols"], input.layers)],
        paper=lambda w: ["--paper-dataset", PAPER_DATASETS[w.dataset]] if w.dataset in PAPER_DATASETS else [],
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/importance/{{dataset}}_ablation.log",
    benchmark:
        f"{R}/benchmarks/importance/{{dataset}}_ablation.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow importance ablation --runs {input.runs:q} --layers {params.layers:q} --out-table {params.stem:q}"
        " --title {wildcards.dataset:q} {params.paper:q} > {log:q} 2>&1"


rule probe:
    """A linear probe on each single layer, every fold/seed: the per-layer accuracy curve."""
    input:
        unpack(features),
    output:
        probe=f"{R}/probes/{{dataset}}/{{protocol}}/probe.csv",
    params:
        store=lambda w, input: os.path.dirname(input.features),
        out=lambda w, output: os.path.dirname(output.probe),
        settings=lambda w: settings_json(train_settings(config, w.dataset, "linear", w.protocol)),
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/probe/{{dataset}}_{{protocol}}.log",
    benchmark:
        f"{R}/benchmarks/probe/{{dataset}}_{{protocol}}.tsv"
    threads: config["threads"]
    resources:
        gpu=dataset_resource("train", "gpu", 0),
        mem_mb=dataset_resource("train", "mem_mb", 2000),
        runtime=dataset_resource("train", "runtime", 60),
    shell:
        "daamflow importance probe --features {params.store:q} --settings {params.settings:q} --out {params.out:q}"
        " --threads {threads} > {log:q} 2>&1"


rule correlate:
    """Per-layer IF against per-layer probe accuracy (Spearman per fold and mean), with the weighted-sum weights."""
    input:
        per_layer=f"{R}/importance/{{dataset}}/{{protocol}}/per_layer.csv",
        probe=f"{R}/probes/{{dataset}}/{{protocol}}/probe.csv",
        weights=lambda w: runs_of(w, "weighted_sum") if "weighted_sum" in config["methods"] else [],
    output:
        tables=[
            report(
                f"{R}/tables/{{dataset}}_{{protocol}}_if_probe.csv",
                caption="../report/if_probe.rst",
                category="Tables",
                subcategory="{dataset}",
                labels={"table": "{dataset}_{protocol}_if_probe"},
            ),
            f"{R}/tables/{{dataset}}_{{protocol}}_if_probe.md",
            f"{R}/tables/{{dataset}}_{{protocol}}_if_probe.tex",
        ],
        figure=report(
            f"{R}/figures/{{dataset}}_{{protocol}}_if_probe.png",
            caption="../report/if_probe.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "IF vs probe accuracy ({protocol})"},
        ),
    params:
        probes=lambda w, input: os.path.dirname(input.probe),
        weights=lambda w, input: ["--weights-runs", os.path.dirname(input.weights)] if input.weights else [],
        stem=lambda w, output: output.tables[0][: -len(".csv")],
        title=lambda w: f"{w.dataset} ({w.protocol})",
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/importance/{{dataset}}_{{protocol}}_correlate.log",
    benchmark:
        f"{R}/benchmarks/importance/{{dataset}}_{{protocol}}_correlate.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow importance correlate --per-layer {input.per_layer:q} --probes {params.probes:q} {params.weights:q}"
        " --out-table {params.stem:q} --figure {output.figure:q} --title {params.title:q} > {log:q} 2>&1"


rule learned_parameters:
    """The ranges of the learned δ (mean offset) and ξ (scaled variance) of every DAAM run."""
    input:
        runs=[f"{d}/runs.csv" for d in targets.daam_run_dirs(config)],
    output:
        tables=[
            report(
                f"{R}/tables/learned_parameters.csv",
                caption="../report/learned_parameters.rst",
                category="Paper tables",
                subcategory="learned parameters",
                labels={"table": "learned δ/ξ ranges"},
            ),
            f"{R}/tables/learned_parameters.md",
            f"{R}/tables/learned_parameters.tex",
        ],
    params:
        runs=lambda w, input: [os.path.dirname(p) for p in input.runs],
        stem=lambda w, output: output.tables[0][: -len(".csv")],
        pairs=PAPER_PAIRS,
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/importance/learned_parameters.log",
    benchmark:
        f"{R}/benchmarks/importance/learned_parameters.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow importance ranges --runs {params.runs:q} --out-table {params.stem:q} --paper-datasets {params.pairs:q}"
        " > {log:q} 2>&1"
