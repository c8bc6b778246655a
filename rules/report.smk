rule report_dataset:
    """Tables in the paper's shape (methods × folds/seeds, mean ± std) per protocol, and the accuracy figure."""
    input:
        runs=lambda w: targets.run_tables(config, w.dataset),
    output:
        tables=[f for f in targets.dataset_tables(config, "{dataset}") if not f.endswith(".png")],
        figure=f"{R}/figures/{{dataset}}_accuracy.png",
    params:
        tables=lambda w, output: os.path.dirname(output.tables[0]),
        figures=lambda w, output: os.path.dirname(output.figure),
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/report/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/report/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow report dataset --runs {input.runs} --tables {params.tables} --figures {params.figures} > {log} 2>&1"


rule summary:
    """summary.md (every dataset's protocol table, linked) and summary.json (headline metrics, DVC `metrics`)."""
    input:
        runs=targets.run_tables(config),
        tables=[t for d in DATASETS for t in targets.dataset_tables(config, d)],
    output:
        md=f"{R}/tables/summary.md",
        json=f"{R}/tables/summary.json",
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/report/summary.log",
    benchmark:
        f"{R}/benchmarks/report/summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow report summary --runs {input.runs} --out-md {output.md} --out-json {output.json} > {log} 2>&1"
