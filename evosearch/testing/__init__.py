"""Tiny, random-weight, fully offline diffusers pipelines for tests and benchmarks.

Every factory here builds a real diffusers pipeline class out of components
constructed from configs (never from the Hugging Face hub), the same way
diffusers' own test-suite does in ``get_dummy_components``.  Nothing is
downloaded; the tokenizers are built locally (:mod:`evosearch.testing.tokenizers`:
a byte-level CLIP tokenizer and a character-level T5 / Llama one).

The package is split by model family:

* :mod:`~evosearch.testing.tokenizers` -- ``clip_tokenizer``, ``t5_tokenizer``, ``llama_tokenizer``
* :mod:`~evosearch.testing.components` -- seeded construction and the shared text encoders, VAE configs
* :mod:`~evosearch.testing.sd` -- UNet pipelines: ``tiny_sd``, ``tiny_sdxl``, ``sd_shaped``
* :mod:`~evosearch.testing.flow` -- flow-matching transformers: ``tiny_sd3``, ``tiny_flux``
* :mod:`~evosearch.testing.video` -- ``tiny_wan``, ``tiny_wan_i2v``, ``tiny_cogvideox``, ``tiny_ltx``,
  ``tiny_hunyuan_video`` (see that module for the video defaults)

All factories return a pipeline on CPU, in float32, with every torch module in
``.eval()`` mode and the progress bar disabled.  Weights are a deterministic
function of ``seed``; the global torch RNG state is left untouched.

The VAEs have four resolution levels, so ``pipe.vae_scale_factor == 8`` exactly
as for the real models, and each pipeline's default resolution is 64x64 pixels
(an 8x8 latent), so ``pipe(prompt)`` without ``height``/``width`` stays cheap:

============  ==========================  ===========================  ================
factory       pipeline                    latent at 64x64              scheduler
============  ==========================  ===========================  ================
tiny_sd       StableDiffusionPipeline     (B, 4, 8, 8)                 DDIMScheduler
tiny_sdxl     StableDiffusionXLPipeline   (B, 4, 8, 8)                 EulerDiscrete
tiny_sd3      StableDiffusion3Pipeline    (B, 16, 8, 8)                FlowMatchEuler (shift 3)
tiny_flux     FluxPipeline                (B, 16, 8, 8) packed to      FlowMatchEuler (dynamic
                                          (B, 16, 64) for the model    shifting, as FLUX.1)
sd_shaped     StableDiffusionPipeline     (B, 4, res/8, res/8)         DDIMScheduler
============  ==========================  ===========================  ================

Other sizes work as long as height and width are multiples of 8 (SD, SDXL),
16 (SD3: ``vae_scale_factor * patch_size``; at most 512 px with the tiny
transformer's ``pos_embed_max_size=32`` patches) or 16 (Flux: ``vae_scale_factor * 2``).

The models are tiny, so on a CPU they run fastest with ``torch.set_num_threads(1)``;
on a busy machine a 2-thread OpenMP pool can turn a 0.03 s call into seconds.

``sd_shaped`` is different in purpose: a StableDiffusionPipeline whose random
UNet is large enough to dominate the run time on a CPU (for overhead
benchmarks), while the text encoder and VAE stay small.
"""

from __future__ import annotations

from .flow import tiny_flux, tiny_sd3
from .sd import sd_shaped, tiny_sd, tiny_sdxl
from .tokenizers import (
    CLIP_BOS_ID,
    CLIP_EOS_ID,
    CLIP_MAX_LENGTH,
    CLIP_VOCAB_SIZE,
    T5_MAX_LENGTH,
    T5_VOCAB_SIZE,
    clip_tokenizer,
    llama_tokenizer,
    t5_tokenizer,
)
from .video import tiny_cogvideox, tiny_hunyuan_video, tiny_ltx, tiny_wan, tiny_wan_i2v

__all__ = [
    "tiny_sd",
    "tiny_sdxl",
    "tiny_sd3",
    "tiny_flux",
    "sd_shaped",
    "clip_tokenizer",
    "t5_tokenizer",
    "CLIP_VOCAB_SIZE",
    "T5_VOCAB_SIZE",
    "tiny_wan",
    "tiny_wan_i2v",
    "tiny_cogvideox",
    "tiny_ltx",
    "tiny_hunyuan_video",
    "llama_tokenizer",
]
