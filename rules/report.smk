rule report_dataset:
    """Tables in the paper's shape (methods × folds/seeds, mean ± std) per protocol, and the accuracy figure."""
    input:
        runs=lambda w: targets.run_tables(config, w.dataset),
    output:
        tables=[
            (
                report(
                    f,
                    caption="../report/dataset_table.rst",
                    category="Tables",
                    subcategory="{dataset}",
                    labels={"table": os.path.basename(f)[: -len(".csv")]},
                )
                if f.endswith(".csv")
                else f
            )
            for f in targets.dataset_tables(config, "{dataset}")
            if not f.endswith(".png")
        ],
        figure=report(
            f"{R}/figures/{{dataset}}_accuracy.png",
            caption="../report/accuracy_figure.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "{dataset} accuracy per fold/seed"},
        ),
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
        "daamflow report dataset --runs {input.runs:q} --tables {params.tables:q} --figures {params.figures:q} > {log:q} 2>&1"


rule paper_tables:
    """The paper's table of the dataset this one is or stands in for, per protocol: ours, published and Δ per cell."""
    input:
        runs=lambda w: targets.run_tables(config, w.dataset),
    output:
        tables=[
            (
                report(
                    f"{R}/tables/{{dataset}}_{p}_vs_paper.{ext}",
                    caption="../report/paper_table.rst",
                    category="Paper tables",
                    subcategory="{dataset}",
                    labels={"table": f"{{dataset}} {p} vs paper"},
                )
                if ext == "csv"
                else f"{R}/tables/{{dataset}}_{p}_vs_paper.{ext}"
            )
            for p in config["protocols"]
            for ext in ("csv", "md", "tex")
        ],
    params:
        tables=lambda w, output: os.path.dirname(output.tables[0]),
        paper=lambda w: PAPER_DATASETS[w.dataset],
        stand_in=lambda w: "--stand-in" if w.dataset in targets.stand_ins(config) else "",
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/report/{{dataset}}_vs_paper.log",
    benchmark:
        f"{R}/benchmarks/report/{{dataset}}_vs_paper.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow report paper --runs {input.runs:q} --paper-dataset {params.paper:q} {params.stand_in}"
        " --tables {params.tables:q} > {log:q} 2>&1"


rule paper_summary:
    """The paper's summary table (MHA, best LoRA, best DAAM, and the differences): ours, published and Δ."""
    input:
        runs=[t for d in PAPER_DATASETS for t in targets.run_tables(config, d)],
    output:
        tables=[
            report(
                f"{R}/tables/paper_summary.csv",
                caption="../report/paper_summary.rst",
                category="Paper tables",
                subcategory="summary",
                labels={"table": "paper summary"},
            ),
            f"{R}/tables/paper_summary.md",
            f"{R}/tables/paper_summary.tex",
        ],
    params:
        stem=lambda w, output: output.tables[0][: -len(".csv")],
        pairs=PAPER_PAIRS,
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/report/paper_summary.log",
    benchmark:
        f"{R}/benchmarks/report/paper_summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow report paper-summary --runs {input.runs:q} --paper-datasets {params.pairs:q}"
        " --out-table {params.stem:q} > {log:q} 2>&1"


rule parameter_table:
    """The paper's parameter table (Table 1, Table 3) from the model registry at its encoder shapes, beside it."""
    output:
        tables=[
            report(
                f"{R}/tables/parameters.csv",
                caption="../report/parameters.rst",
                category="Paper tables",
                subcategory="parameters",
                labels={"table": "parameters"},
            ),
            f"{R}/tables/parameters.md",
            f"{R}/tables/parameters.tex",
        ],
    params:
        tables=lambda w, output: os.path.dirname(output.tables[0]),
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/report/parameters.log",
    benchmark:
        f"{R}/benchmarks/report/parameters.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow report parameters --tables {params.tables:q} > {log:q} 2>&1"


rule claims:
    """Each headline claim of the paper against our runs (a paired test over folds/seeds per protocol, and over the
    test items of a fixed test set; Holm; a verdict), and every DAAM method against every baseline."""
    input:
        runs=targets.run_tables(config),
        parameters=f"{R}/tables/parameters.csv",
    output:
        claims=[
            report(
                f"{R}/tables/claims.csv",
                caption="../report/claims.rst",
                category="Claims",
                labels={"table": "claims"},
            ),
            f"{R}/tables/claims.md",
            f"{R}/tables/claims.tex",
        ],
        paired=[
            report(
                f"{R}/tables/paired.csv",
                caption="../report/paired.rst",
                category="Claims",
                labels={"table": "paired comparisons"},
            ),
            f"{R}/tables/paired.md",
            f"{R}/tables/paired.tex",
        ],
        metrics=f"{R}/tables/claims.json",
    params:
        tables=lambda w, output: os.path.dirname(output.metrics),
        pairs=PAPER_PAIRS,
        alpha=config["claims"]["alpha"],
        margins=[f"{k}={m['points']}" for k, m in config["claims"]["margins"].items()],
        # one fixed test set: the claims also test over its items, read from the predictions.csv beside runs.csv
        seeded=[d for d in PAPER_DATASETS if config["datasets"][d]["evaluation"]["scheme"] == "seeds"],
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/report/claims.log",
    benchmark:
        f"{R}/benchmarks/report/claims.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow report claims --runs {input.runs:q} --paper-datasets {params.pairs:q} --parameters {input.parameters:q}"
        " --tables {params.tables:q} --alpha {params.alpha} --margins {params.margins:q} --seeded {params.seeded:q}"
        " > {log:q} 2>&1"


rule quirk_table:
    """Each released-code quirk's switch off vs on (daamflow.report.quirks.QUIRKS), per dataset, paired over folds/seeds;
    a quirk whose two runs are not both in the grid is left out."""
    input:
        runs=targets.run_tables(config) + targets.if_source_run_tables(config),
    output:
        tables=[
            report(
                f"{R}/tables/quirks.csv",
                caption="../report/quirks.rst",
                category="Claims",
                labels={"table": "quirk effects"},
            ),
            f"{R}/tables/quirks.md",
            f"{R}/tables/quirks.tex",
        ],
    params:
        stem=lambda w, output: output.tables[0][: -len(".csv")],
        alpha=config["claims"]["alpha"],
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/report/quirks.log",
    benchmark:
        f"{R}/benchmarks/report/quirks.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow report quirks --runs {input.runs:q} --out-table {params.stem:q} --alpha {params.alpha} > {log:q} 2>&1"


rule curves:
    """Plot-ready CSVs for `dvc plots`: per-epoch selection accuracy and loss per method, per-layer IF and probe."""
    input:
        unpack(lambda w: targets.importance_curve_inputs(config)),
        runs=targets.run_tables(config),
    output:
        curves=targets.curve_files(config),
    params:
        out=lambda w, output: os.path.dirname(os.path.dirname(output.curves[0])),  # …/curves/history/x.csv
    conda:
        "../envs/daamflow.yaml"
    log:
        f"{R}/logs/report/curves.log",
    benchmark:
        f"{R}/benchmarks/report/curves.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "daamflow report curves --runs {input.runs:q} --per-layer {input.per_layer:q} --probes {input.probes:q}"
        " --out {params.out:q} > {log:q} 2>&1"


rule summary:
    """summary.md (every dataset's protocol table, linked; the paper's summary table and claims) and summary.json
    (mean, std and n of every method: DVC `metrics`)."""
    input:
        runs=targets.run_tables(config),
        tables=[t for d in DATASETS for t in targets.dataset_tables(config, d)],
        extra=targets.report_tables(config),
    output:
        md=report(f"{R}/tables/summary.md", caption="../report/summary.rst", category="Summary"),
        json=f"{R}/tables/summary.json",
    params:
        paper_grid="--paper-grid" if targets.is_paper_grid(config) else "",
        pairs=PAPER_PAIRS,
        stand_ins=targets.stand_ins(config),
        embed=[
            f"{title}={R}/tables/{name}.md"
            for title, name in [
                *([("The paper's summary table", "paper_summary")] if PAPER_DATASETS else []),
                ("The paper's claims", "claims"),
                ("Effects of the released code's quirks", "quirks"),
            ]
        ],
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
        "daamflow report summary --runs {input.runs:q} --out-md {output.md:q} --out-json {output.json:q} {params.paper_grid}"
        " --paper-datasets {params.pairs:q} --stand-ins {params.stand_ins:q} --embed {params.embed:q} > {log:q} 2>&1"
