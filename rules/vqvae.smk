rule vqvae_train:
    """Train one VQ-VAE (plain residual blocks, or Mixture-of-DAAM ones) and evaluate its reconstructions."""
    output:
        metrics=out(targets.VQVAE_METRICS),
        grid=out(targets.VQVAE_GRID),
    params:
        usage=benchmark_file("vqvae", "{variant}_seed{seed}"),
        out=lambda w, output: os.path.dirname(output.metrics),
        preset=config["vqvae"].get("preset", "demo"),
        hyper=json.dumps(config["vqvae"].get("params", {}), sort_keys=True),
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("vqvae", "{variant}_seed{seed}"),
    wildcard_constraints:
        variant="plain|daam",
        seed=r"\d+",
    threads: config["threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "daamflow --usage {params.usage:q} vqvae train"
        " --variant {wildcards.variant} --seed {wildcards.seed} --out {params.out:q}"
        " --preset {params.preset:q} --params-json {params.hyper:q} --threads {threads} > {log:q} 2>&1"


rule vqvae_table:
    """Plain vs DAAM VQ-VAE: mean ± std over seeds of MSE, PSNR, SSIM, codebook perplexity and usage; a grid."""
    input:
        runs=targets.vqvae_runs(config),
    output:
        csv=report(out(targets.VQVAE_CSV), caption="../report/vqvae.rst", category="Tables", subcategory="VQ-VAE",
                   labels={"table": "vqvae"}),
        md=out(targets.VQVAE_MD),
        grid=figure(targets.VQVAE_FIGURE, "vqvae", "VQ-VAE", "reconstructions"),
    params:
        usage=benchmark_file("vqvae", "table"),
        runs=lambda w, input: [os.path.dirname(p) for p in input.runs],
    conda:
        "../envs/daamflow.yaml"
    log:
        log_file("vqvae", "table"),
    shell:
        "daamflow --usage {params.usage:q} vqvae table"
        " --runs {params.runs:q} --out-csv {output.csv:q} --out-md {output.md:q}"
        " --grid-out {output.grid:q} > {log:q} 2>&1"
