"""Tiny video pipelines: Wan (text- and image-to-video), CogVideoX, LTX-Video and HunyuanVideo.

Built like diffusers' own tests' ``get_dummy_components`` for these pipelines, with the
local tokenizers of :mod:`evosearch.testing.tokenizers` instead of hub downloads. Video pipelines
have no small default size (Wan draws 81 frames at 480x832 by default), so each factory sets three
hints that evosearch's video Steppers read when a request does not give them:
``pipe.default_height``, ``pipe.default_width`` and ``pipe.default_num_frames``.

==================  ===========================  ====================================  =================
factory             pipeline                     latent state at the defaults          scheduler
==================  ===========================  ====================================  =================
tiny_wan            WanPipeline                  (B, 16, 3, 4, 4)   9 frames, 32x32   FlowMatchEuler (shift 7)
tiny_wan_i2v        WanImageToVideoPipeline      (B, 16, 3, 4, 4)   + 20-ch condition FlowMatchEuler (shift 7)
tiny_cogvideox      CogVideoXPipeline            (B, 3, 4, 2, 2)    9 frames, 16x16   CogVideoXDDIM (v-pred,
                                                 (frames before channels)               snr shift 3, zero SNR)
tiny_ltx            LTXPipeline                  (B, 3*8*8, 8) packed 9 frames 32x32  FlowMatchEuler (dynamic)
tiny_hunyuan_video  HunyuanVideoPipeline         (B, 4, 3, 2, 2)    9 frames, 16x16   FlowMatchEuler (shift 7)
==================  ===========================  ====================================  =================
"""

from __future__ import annotations

from .components import SD_BETAS, build, clip_text_encoder, finish, t5_encoder, vae_blocks
from .tokenizers import T5_VOCAB_SIZE, clip_tokenizer, llama_tokenizer, t5_tokenizer

__all__ = ["tiny_wan", "tiny_wan_i2v", "tiny_cogvideox", "tiny_ltx", "tiny_hunyuan_video"]


def _wan_components(seed: int, in_channels: int = 16, image_dim: int | None = None) -> dict:
    """The components Wan text- and image-to-video share: T5, AutoencoderKLWan, FlowMatchEuler (shift 7) and a
    WanTransformer3DModel taking ``in_channels`` latent channels (and ``image_dim`` image embeddings)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    return dict(
        tokenizer=t5_tokenizer(),
        text_encoder=t5_encoder(seed, 2, d_model=32),
        vae=build(seed, 1, AutoencoderKLWan, base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                  temperal_downsample=[False, True, True]),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=build(seed, 0, WanTransformer3DModel, patch_size=(1, 2, 2), num_attention_heads=2,
                          attention_head_dim=12, in_channels=in_channels, out_channels=16, text_dim=32, freq_dim=256,
                          ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                          rope_max_seq_len=32, image_dim=image_dim),
    )


def tiny_wan(seed: int = 0):
    """Tiny random ``WanPipeline`` (WanTransformer3DModel, AutoencoderKLWan, T5 encoder).

    Defaults 9 frames at 32x32 px -> latent (B, 16, 3, 4, 4) (temporal factor 4, spatial 8);
    T5 prompt embeds (B, max_sequence_length, 32). Scheduler: FlowMatchEuler, shift 7 (as diffusers' test).
    """
    from diffusers import WanPipeline

    return finish(WanPipeline(**_wan_components(seed)), video=(32, 32, 9))


def tiny_wan_i2v(seed: int = 0, image_encoder: bool = True):
    """Tiny random ``WanImageToVideoPipeline`` (Wan 2.1 layout: the transformer sees 16 noise + 4 mask + 16
    condition-latent channels; with ``image_encoder`` a tiny CLIP vision tower feeds ``image_dim=4`` embeddings).
    Defaults 9 frames at 32x32 px."""
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder = processor = None
    if image_encoder:
        encoder = build(seed, 3, lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=1)))
        processor = CLIPImageProcessor(crop_size=32, size=32)
    components = _wan_components(seed, in_channels=36, image_dim=4 if image_encoder else None)
    pipe = WanImageToVideoPipeline(**components, image_encoder=encoder, image_processor=processor)
    return finish(pipe, video=(32, 32, 9))


def tiny_cogvideox(seed: int = 0):
    """Tiny random ``CogVideoXPipeline`` (CogVideoXTransformer3DModel, AutoencoderKLCogVideoX, T5 encoder) with
    the CogVideoX-2b scheduler config: ``CogVideoXDDIMScheduler`` (v-prediction, SNR shift 3, zero terminal SNR,
    trailing spacing). Defaults 9 frames at 16x16 px -> latent (B, 3, 4, 2, 2): frames before channels."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    transformer = build(seed, 0, CogVideoXTransformer3DModel,
                        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
                        text_embed_dim=32, num_layers=1, sample_width=2, sample_height=2, sample_frames=9,
                        patch_size=2, temporal_compression_ratio=4, max_text_seq_length=32)
    vae = build(seed, 1, AutoencoderKLCogVideoX, **vae_blocks(
        "CogVideoXDownBlock3D", "CogVideoXUpBlock3D", latent_channels=4, norm_num_groups=2,
        temporal_compression_ratio=4))
    scheduler = CogVideoXDDIMScheduler(
        **SD_BETAS, clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
        rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing")
    pipe = CogVideoXPipeline(tokenizer=t5_tokenizer(), text_encoder=t5_encoder(seed, 2, d_model=32),
                             vae=vae, transformer=transformer, scheduler=scheduler)
    return finish(pipe, video=(16, 16, 9))


def _ltx_vae():
    from diffusers import AutoencoderKLLTXVideo

    vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                spatio_temporal_scaling=(True, True, False, False),
                                layers_per_block=(1, 1, 1, 1, 1), decoder_block_out_channels=(8, 8, 8, 8),
                                decoder_spatio_temporal_scaling=(True, True, False, False),
                                decoder_layers_per_block=(1, 1, 1, 1, 1), patch_size=1, patch_size_t=1,
                                encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return vae


def tiny_ltx(seed: int = 0):
    """Tiny random ``LTXPipeline`` (LTXVideoTransformer3DModel, AutoencoderKLLTXVideo, T5 encoder).

    Defaults 9 frames at 32x32 px -> VAE latent (B, 8, 3, 8, 8) (temporal and spatial factor 4 here), packed
    for the transformer into tokens (B, 3*8*8, 8). Scheduler: FlowMatchEuler with LTX-Video's dynamic-shifting
    config (shift from the video sequence length).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    transformer = build(seed, 0, LTXVideoTransformer3DModel,
                        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
                        attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
        base_image_seq_len=1024, max_image_seq_len=4096)
    pipe = LTXPipeline(scheduler=scheduler, vae=build(seed, 1, _ltx_vae),
                       text_encoder=t5_encoder(seed, 2, d_model=32), tokenizer=t5_tokenizer(),
                       transformer=transformer)
    return finish(pipe, video=(32, 32, 9))


def tiny_hunyuan_video(seed: int = 0):
    """Tiny random ``HunyuanVideoPipeline`` (HunyuanVideoTransformer3DModel with guidance embeds, Llama + CLIP text
    encoders, AutoencoderKLHunyuanVideo). Defaults 9 frames at 16x16 px -> latent (B, 4, 3, 2, 2).
    The Llama tokenizer is :func:`~evosearch.testing.llama_tokenizer` (character level). Scheduler:
    FlowMatchEuler, shift 7."""
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    from transformers import LlamaConfig, LlamaModel

    transformer = build(seed, 0, HunyuanVideoTransformer3DModel,
                        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
                        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
                        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
    vae = build(seed, 1, AutoencoderKLHunyuanVideo, **vae_blocks(
        "HunyuanVideoDownBlock3D", "HunyuanVideoUpBlock3D", latent_channels=4, norm_num_groups=4, act_fn="silu",
        scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True))
    llama = build(seed, 2, lambda: LlamaModel(LlamaConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=0, hidden_size=16, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=T5_VOCAB_SIZE, hidden_act="gelu", max_position_embeddings=1024)))
    clip = clip_text_encoder(seed, 3, hidden_size=8, projection_dim=8, num_attention_heads=4)
    pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=llama_tokenizer(), transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
                                tokenizer_2=clip_tokenizer())
    return finish(pipe, video=(16, 16, 9))
