rule report_dataset:
    """Tables in the paper's shape (methods × folds/seeds, mean ± std) per protocol, and the accuracy figure."""
    input:
        runs=lambda w: targets.run_tables(config, w.dataset),
    output:
        tables=[
            f
            for s in targets.dataset_table_stems(config, "{dataset}")
            for f in table(s, "dataset_table", "Tables", "{dataset}")
        ],
        figure=figure(targets.ACCURACY_FIGURE, "accuracy_figure", "{dataset}", "{dataset} accuracy per fold/seed"),
    params:
        usage=benchmark_file("report", "{dataset}"),
        tables=lambda w, output: os.path.dirname(output.tables[0]),
        figures=lambda w, output: os.path.dirname(output.figure),
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("report", "{dataset}"),
    shell:
        "daamflow --usage {params.usage:q} report dataset"
        " --runs {input.runs:q} --tables {params.tables:q} --figures {params.figures:q} > {log:q} 2>&1"


rule paper_tables:
    """The paper's table of the dataset this one is or stands in for, per protocol: ours, published and Δ per cell."""
    input:
        runs=lambda w: targets.run_tables(config, w.dataset),
    output:
        tables=[
            f
            for p in config["protocols"]
            for f in table(
                targets.VS_PAPER_TABLE, "paper_table", "Paper tables", "{dataset}", f"{{dataset}} {p} vs paper",
                protocol=p,
            )
        ],
    params:
        usage=benchmark_file("report", "{dataset}_vs_paper"),
        tables=lambda w, output: os.path.dirname(output.tables[0]),
        paper=lambda w: PAPER_DATASETS[w.dataset],
        stand_in=lambda w: "--stand-in" if w.dataset in targets.stand_ins(config) else "",
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("report", "{dataset}_vs_paper"),
    shell:
        "daamflow --usage {params.usage:q} report paper"
        " --runs {input.runs:q} --paper-dataset {params.paper:q} {params.stand_in}"
        " --tables {params.tables:q} > {log:q} 2>&1"


rule paper_summary:
    """The paper's summary table (MHA, best LoRA, best DAAM, and the differences): ours, published and Δ."""
    input:
        runs=[t for d in PAPER_DATASETS for t in targets.run_tables(config, d)],
    output:
        tables=table(targets.PAPER_SUMMARY_TABLE, "paper_summary", "Paper tables", "summary", "paper summary"),
    params:
        usage=benchmark_file("report", "paper_summary"),
        stem=stem,
        pairs=PAPER_PAIRS,
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("report", "paper_summary"),
    shell:
        "daamflow --usage {params.usage:q} report paper-summary --runs {input.runs:q} --paper-datasets {params.pairs:q}"
        " --out-table {params.stem:q} > {log:q} 2>&1"


rule parameter_table:
    """The paper's parameter table (Table 1, Table 3) from the model registry at its encoder shapes, beside it."""
    output:
        tables=table(targets.PARAMETERS_TABLE, "parameters", "Paper tables", "parameters"),
    params:
        usage=benchmark_file("report", "parameters"),
        tables=lambda w, output: os.path.dirname(output.tables[0]),
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("report", "parameters"),
    shell:
        "daamflow --usage {params.usage:q} report parameters --tables {params.tables:q} > {log:q} 2>&1"


rule claims:
    """Each headline claim of the paper against our runs (a paired test over folds/seeds per protocol, and over the
    test items of a fixed test set; Holm; a verdict), and every DAAM method against every baseline."""
    input:
        runs=targets.run_tables(config),
        parameters=rules.parameter_table.output.tables[0],  # its csv
    output:
        claims=table(targets.CLAIMS_TABLE, "claims", "Claims"),
        paired=table(targets.PAIRED_TABLE, "paired", "Claims", label="paired comparisons"),
        metrics=out(targets.CLAIMS_JSON),
    params:
        usage=benchmark_file("report", "claims"),
        tables=lambda w, output: os.path.dirname(output.metrics),
        pairs=PAPER_PAIRS,
        alpha=config["claims"]["alpha"],
        margins=[f"{k}={m['points']}" for k, m in config["claims"]["margins"].items()],
        # one fixed test set: the claims also test over its items, read from the predictions.csv beside runs.csv
        seeded=[d for d in PAPER_DATASETS if config["datasets"][d]["evaluation"]["scheme"] == "seeds"],
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("report", "claims"),
    shell:
        "daamflow --usage {params.usage:q} report claims"
        " --runs {input.runs:q} --paper-datasets {params.pairs:q} --parameters {input.parameters:q}"
        " --tables {params.tables:q} --alpha {params.alpha} --margins {params.margins:q} --seeded {params.seeded:q}"
        " > {log:q} 2>&1"


rule quirk_table:
    """Each released-code quirk's switch off vs on (daamflow.report.quirks.QUIRKS), per dataset, paired over folds/seeds;
    a quirk whose two runs are not both in the grid is left out."""
    input:
        runs=targets.run_tables(config) + targets.if_source_run_tables(config),
    output:
        tables=table(targets.QUIRKS_TABLE, "quirks", "Claims", label="quirk effects"),
    params:
        usage=benchmark_file("report", "quirks"),
        stem=stem,
        alpha=config["claims"]["alpha"],
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("report", "quirks"),
    shell:
        "daamflow --usage {params.usage:q} report quirks"
        " --runs {input.runs:q} --out-table {params.stem:q} --alpha {params.alpha} > {log:q} 2>&1"


rule curves:
    """Plot-ready CSVs for `dvc plots`: per-epoch selection accuracy and loss per method, per-layer IF and probe."""
    input:
        unpack(lambda w: targets.importance_curve_inputs(config)),
        runs=targets.run_tables(config),
    output:
        curves=targets.curve_files(config),
    params:
        usage=benchmark_file("report", "curves"),
        out=lambda w, output: os.path.dirname(os.path.dirname(output.curves[0])),  # …/curves/history/x.csv
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("report", "curves"),
    shell:
        "daamflow --usage {params.usage:q} report curves"
        " --runs {input.runs:q} --per-layer {input.per_layer:q} --probes {input.probes:q}"
        " --out {params.out:q} > {log:q} 2>&1"


rule summary:
    """summary.md (every dataset's protocol table, linked; the paper's summary table and claims) and summary.json
    (mean, std and n of every method: DVC `metrics`)."""
    input:
        runs=targets.run_tables(config),
        tables=[t for d in DATASETS for t in targets.dataset_tables(config, d)],
        extra=targets.report_tables(config),
    output:
        md=report(out(targets.SUMMARY_MD), caption="../report/summary.rst", category="Summary"),
        json=out(targets.SUMMARY_JSON),
    params:
        usage=benchmark_file("report", "summary"),
        paper_grid="--paper-grid" if targets.is_paper_grid(config) else "",
        pairs=PAPER_PAIRS,
        stand_ins=targets.stand_ins(config),
        embed=targets.summary_embeds(config),
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("report", "summary"),
    shell:
        "daamflow --usage {params.usage:q} report summary"
        " --runs {input.runs:q} --out-md {output.md:q} --out-json {output.json:q} {params.paper_grid}"
        " --paper-datasets {params.pairs:q} --stand-ins {params.stand_ins:q} --embed {params.embed:q} > {log:q} 2>&1"
