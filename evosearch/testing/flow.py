"""Tiny flow-matching image transformers: Stable Diffusion 3 (``tiny_sd3``) and FLUX.1 (``tiny_flux``)."""

from __future__ import annotations

from .components import autoencoder_kl, build, clip_text_encoder, finish, t5_encoder
from .tokenizers import clip_tokenizer, t5_tokenizer

__all__ = ["tiny_sd3", "tiny_flux"]


def tiny_sd3(seed: int = 0):
    """Tiny random ``StableDiffusion3Pipeline`` (SD3Transformer2DModel, 2x CLIP-with-projection + T5).

    Default 64x64 px -> latent (B, 16, 8, 8) (patch size 2 -> 16 image tokens).
    Prompt embeds (B, 77 + max_sequence_length, 64): the two CLIPs' penultimate states
    (32 + 32) zero-padded to the T5 width 64, concatenated with T5 states along the sequence.
    Pooled (B, 64) = two 32-d CLIP projections. Scheduler: FlowMatchEuler, shift 3.0, no dynamic shifting.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = build(
        seed, 0, SD3Transformer2DModel, sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=64,  # T5 width
        caption_projection_dim=32,  # must equal heads * head_dim
        pooled_projection_dim=64,  # 2 x CLIP projection_dim
        pos_embed_max_size=32,
    )
    vae = build(seed, 1, autoencoder_kl, latent_channels=16, flow="sd3")
    text_encoder = clip_text_encoder(seed, 2, projection=True)
    text_encoder_2 = clip_text_encoder(seed, 3, projection=True)
    text_encoder_3 = t5_encoder(seed, 4, d_model=64)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(), text_encoder_3=text_encoder_3, tokenizer_3=t5_tokenizer(),
        image_encoder=None, feature_extractor=None,
    )
    return finish(pipe)


def tiny_flux(seed: int = 0):
    """Tiny random ``FluxPipeline`` (FluxTransformer2DModel with guidance embeds, CLIP + T5).

    Default 64x64 px -> VAE latent (B, 16, 8, 8), packed for the transformer into 2x2 patches
    (B, 16, 64); ``latent_image_ids`` (16, 3); T5 prompt embeds (B, max_sequence_length, 32),
    pooled CLIP (B, 32), ``text_ids`` (max_sequence_length, 3). Scheduler: FlowMatchEuler with the
    FLUX.1 dynamic-shifting config.

    ``pipe.default_sample_size`` is set to 8 (the stock pipeline hard-codes 128, i.e. 1024 px).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = build(
        seed, 0, FluxTransformer2DModel, patch_size=1,
        in_channels=64,  # 16 latent channels x 2 x 2 packing
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32,  # T5 width
        pooled_projection_dim=32,  # CLIP pooler width
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )
    vae = build(seed, 1, autoencoder_kl, latent_channels=16, flow="flux")
    text_encoder = clip_text_encoder(seed, 2)
    text_encoder_2 = t5_encoder(seed, 3, d_model=32)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
                        text_encoder_2=text_encoder_2, tokenizer_2=t5_tokenizer(), transformer=transformer)
    return finish(pipe, default_sample_size=8)
