"""Published FID protocols: the sampling settings behind a paper's FID-50K, and the figure a run should reproduce.

A protocol fixes everything that moves FID: sampler and steps, guidance scale and which channels
it guides, the VAE that decodes, the number of images and the reference batch. ``dit-repro
fid-protocol NAME`` samples with exactly these settings and computes FID against the reference
given by path, so that a GPU run can be set beside the published number.

A protocol fixes how to sample, not how the model was trained: the sampler integrates the
checkpoint's own noise schedule. (U-ViT-H/2 was trained on Stable Diffusion's scaled-linear
schedule, dit-repro's models on DiT's linear one; a dit-repro checkpoint sampled with ``uvit`` is
sampled as U-ViT samples, on its own schedule.)
"""

from __future__ import annotations

from dataclasses import dataclass

from dit_repro.data.vae import PRETRAINED_REPOS


@dataclass(frozen=True)
class FIDProtocol:
    """One paper's FID-50K sampling protocol."""

    name: str
    """Name on the command line."""
    sampler: str
    """Sampler of the published runs."""
    steps: int
    """Sampling steps."""
    cfg_scale: float
    """Classifier-free guidance scale in DiT's convention (eps_u + s (eps_c - eps_u); 1.0 = none)."""
    cfg_channels: str
    """``first3`` (DiT's sampler guides the first 3 of 4 latent channels) or ``all``."""
    precision: str
    """Precision of the published runs' forwards, the default of ``--precision``."""
    vae: str | None
    """Default VAE: a Hugging Face repo id (resolved in the local cache only), or None when the
    published VAE has no repo id and must be given by path (``--vae``)."""
    vae_published: str
    """The VAE the published runs decode with, and where its weights come from."""
    num_samples: int
    """Images behind the published FID."""
    reference: str
    """The reference batch the published FID is computed against (given by path on the command line)."""
    published: str
    """The published figure: model, FID and its setting."""
    source: str
    """Where the settings are stated."""


PROTOCOLS: dict[str, FIDProtocol] = {
    "dit": FIDProtocol(
        name="dit",
        sampler="ddpm",
        steps=250,
        cfg_scale=1.5,
        cfg_channels="first3",
        # sample_ddp.py --tf32 defaults to on: fp32 weights, TF32 matmuls.
        precision="tf32",
        vae=PRETRAINED_REPOS[0],
        vae_published=f"{PRETRAINED_REPOS[0]} (Hugging Face), as DiT's sample_ddp.py --vae ema",
        num_samples=50_000,
        reference="ADM's VIRTUAL_imagenet256_labeled.npz (ImageNet 256 reference batch of guided-diffusion's evaluator)",
        published="DiT-XL/2, ImageNet 256x256, 7M steps: FID-50K 2.27 at cfg 1.5 (9.62 without guidance)",
        source="DiT (Peebles & Xie, 2023), ImageNet 256 benchmark, and its sample_ddp.py: 250 DDPM steps, guidance on 3 channels",
    ),
    "uvit": FIDProtocol(
        name="uvit",
        sampler="dpm-solver",
        steps=50,
        # U-ViT writes guidance as (1 + s) eps_c - s eps_u with s = 0.4: 1.4 in DiT's convention.
        cfg_scale=1.4,
        cfg_channels="all",
        # U-ViT's README launches eval_ldm_discrete.py with accelerate --mixed_precision fp16.
        precision="fp16",
        vae=None,
        vae_published=(
            "assets/stable-diffusion/autoencoder_kl_ema.pth of U-ViT's release (Stable Diffusion's KL-f8 "
            "autoencoder in its original key names; dit-repro reads the file with --vae PATH)"
        ),
        num_samples=50_000,
        reference="fid_stats_imagenet256_guided_diffusion.npz (U-ViT's assets/fid_stats, ADM's ImageNet 256 statistics)",
        published="U-ViT-H/2, ImageNet 256x256: FID-50K 2.29",
        source=(
            "U-ViT (Bao et al., 2023), ImageNet 256 benchmark; configs/imagenet256_uvit_huge.py (sample_steps 50, "
            "scale 0.4, algorithm dpm_solver) and eval_ldm_discrete.py (DPM-Solver++ with predict_x0, "
            "sample(steps=50, eps=1/N, T=1): order 3, fast method, time-uniform points)"
        ),
    ),
}
"""The protocols by name."""
