"""Tiny UNet latent-diffusion pipelines: Stable Diffusion 1.x (``tiny_sd``, the bigger ``sd_shaped``) and SDXL."""

from __future__ import annotations

from collections.abc import Sequence

from .components import SD_BETAS, autoencoder_kl, build, clip_text_encoder, finish
from .tokenizers import clip_tokenizer

__all__ = ["tiny_sd", "tiny_sdxl", "sd_shaped"]


# tiny_sd's UNet: 4-channel 8x8 latents, 2 levels of 16 and 32 channels, cross-attention in the inner one
_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
             up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=4)


def _unet(seed: int, **config):
    """A seeded ``UNet2DConditionModel``; ``config`` overrides or adds to the tiny defaults above."""
    from diffusers import UNet2DConditionModel

    return build(seed, 0, UNet2DConditionModel, **{**_UNET, **config})


def _sd_pipeline(unet, vae, text_encoder):
    """A ``StableDiffusionPipeline`` around the given models, with the SD v1.5 DDIM scheduler and no safety checker."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
        # the Stable Diffusion v1.5 scheduler config, DDIM flavour
        scheduler=DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                prediction_type="epsilon"),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    return finish(pipe)


def tiny_sd(seed: int = 0):
    """Tiny random ``StableDiffusionPipeline`` (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, DDIM).

    Default 64x64 px -> latent (B, 4, 8, 8); CLIP text embeddings (B, 77, 32).
    """
    unet = _unet(seed, cross_attention_dim=32, attention_head_dim=4)
    vae = build(seed, 1, autoencoder_kl, latent_channels=4)
    return _sd_pipeline(unet, vae, clip_text_encoder(seed, 2))


def tiny_sdxl(seed: int = 0):
    """Tiny random ``StableDiffusionXLPipeline`` (two CLIP encoders, UNet with ``text_time`` added conditioning).

    Default 64x64 px -> latent (B, 4, 8, 8); prompt embeds (B, 77, 64) (= 32 + 32 from the two
    encoders' penultimate layers), pooled (B, 32) from ``CLIPTextModelWithProjection``.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    addition_time_embed_dim = 8
    pooled_dim = 32
    unet = _unet(
        seed, attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=addition_time_embed_dim,
        # 6 micro-conditioning numbers (orig size, crop, target size) + pooled text embedding
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + pooled_dim,
    )
    vae = build(seed, 1, autoencoder_kl, latent_channels=4, flow="sdxl")
    text_encoder = clip_text_encoder(seed, 2)
    text_encoder_2 = clip_text_encoder(seed, 3, projection=True, projection_dim=pooled_dim)
    scheduler = EulerDiscreteScheduler(**SD_BETAS, steps_offset=1, timestep_spacing="leading",
                                       interpolation_type="linear", prediction_type="epsilon")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler, image_encoder=None, feature_extractor=None,
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    return finish(pipe)


def sd_shaped(
    seed: int = 0,
    resolution: int = 256,
    block_out_channels: Sequence[int] = (128, 256, 256, 512),
    layers_per_block: int = 1,
    cross_attention_dim: int = 64,
    attention_head_dim: int = 8,
):
    """A ``StableDiffusionPipeline`` with an SD-1.x-shaped random UNet big enough to dominate CPU run time.

    The UNet has the SD 1.x block layout (3 cross-attention down blocks + 1 plain, mirrored up) with
    ``block_out_channels`` channels; the text encoder (CLIP, hidden ``cross_attention_dim``, 2 layers)
    and the VAE (4 levels of 8 channels, ``vae_scale_factor`` 8) are kept small. The default
    height/width is ``resolution`` (latent (B, 4, resolution/8, resolution/8)).

    With the defaults (UNet 60M parameters), one UNet call at batch 4 and a 32x32 latent (256 px)
    takes ~0.8 s of CPU time on one thread (~0.45 s wall on 2 idle cores); the text encoder
    (batch 4, with CFG) takes ~0.01 s and a batch-4 VAE decode at 256 px ~0.13 s.
    """
    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8, got {resolution}")
    block_out_channels = tuple(int(c) for c in block_out_channels)
    n = len(block_out_channels)
    unet = _unet(
        seed, sample_size=resolution // 8, block_out_channels=block_out_channels, layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
        norm_num_groups=32 if all(c % 32 == 0 for c in block_out_channels) else 8,
    )
    vae = build(seed, 1, autoencoder_kl, latent_channels=4, sample_size=resolution)
    text_encoder = clip_text_encoder(
        seed, 2, hidden_size=cross_attention_dim, num_attention_heads=4, intermediate_size=2 * cross_attention_dim
    )
    return _sd_pipeline(unet, vae, text_encoder)
