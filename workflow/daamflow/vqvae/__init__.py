"""The VQ-VAE stage: plain vs Mixture-of-DAAM residual blocks (docs/paper-notes.md#7-vq-vae).

``config`` (hyper-parameters, presets) → ``model`` (the nn.Modules) and ``metrics`` (PSNR, SSIM, perplexity) →
``data`` (images, loaders) → ``train`` (one resumable run, its outputs; figures from ``plots``) → ``table`` (plain vs
DAAM over seeds); ``cli`` is `daamflow vqvae train|table`.
"""
