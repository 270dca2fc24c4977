"""Building blocks shared by the tiny pipeline factories: seeded construction, text encoders, VAE configs, finishing.

Every torch module is built through :func:`build`, which seeds a forked torch RNG with
``seed * 1000 + offset``; the offset names the component's slot in its pipeline (0 the denoiser,
1 the VAE, 2, 3, 4 the text / image encoders), so the weights are a deterministic function of
``seed`` and the global RNG state is left untouched.
"""

from __future__ import annotations

import torch

from .tokenizers import CLIP_BOS_ID, CLIP_EOS_ID, CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, T5_VOCAB_SIZE

# The Stable Diffusion v1.5 noise schedule, shared by the SD / SDXL / CogVideoX schedulers.
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

# AutoencoderKL scaling (and, for the flow-matching models, shift) per model family.
_VAE_FLAVOURS = {
    None: dict(scaling_factor=0.18215),
    "sdxl": dict(scaling_factor=0.13025),
    "sd3": dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305),
    "flux": dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611),
}


def build(seed: int, offset: int, fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)`` with the torch RNG seeded to ``seed * 1000 + offset``, restoring the global
    RNG after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + offset)
        module = fn(*args, **kwargs)
    return module


def clip_config(hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=intermediate_size,
        projection_dim=projection_dim, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        # eos != 2, so pooling uses the first <|endoftext|> position; pad = eos as in real CLIP
        bos_token_id=CLIP_BOS_ID, eos_token_id=CLIP_EOS_ID, pad_token_id=CLIP_EOS_ID,
    )


def clip_text_encoder(seed: int, offset: int, projection: bool = False, **config):
    """A seeded tiny ``CLIPTextModel`` (``CLIPTextModelWithProjection`` with ``projection``); ``config``
    overrides :func:`clip_config`'s defaults."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return build(seed, offset, lambda: cls(clip_config(**config)))


def _t5_model(d_model):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=T5_VOCAB_SIZE, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def t5_encoder(seed: int, offset: int, d_model: int = 32):
    """A seeded tiny 2-layer ``T5EncoderModel`` over the :func:`~evosearch.testing.t5_tokenizer` vocabulary."""
    return build(seed, offset, _t5_model, d_model)


def vae_blocks(down_block_type: str, up_block_type: str, latent_channels: int, norm_num_groups: int,
               block_out_channels=(8, 8, 8, 8), **extra) -> dict:
    """The keyword arguments the image and video VAEs share: RGB in and out, one block type per level
    (``len(block_out_channels)`` levels), one layer per block."""
    n = len(block_out_channels)
    return dict(in_channels=3, out_channels=3, down_block_types=(down_block_type,) * n,
                up_block_types=(up_block_type,) * n, block_out_channels=tuple(block_out_channels), layers_per_block=1,
                latent_channels=latent_channels, norm_num_groups=norm_num_groups, **extra)


def autoencoder_kl(latent_channels=4, block_out_channels=(8, 8, 8, 8), norm_num_groups=4, sample_size=64, flow=None):
    """A 4-level AutoencoderKL (vae_scale_factor 8) with tiny channel counts.

    ``flow`` = "sd3" / "flux" gives the SD3 / Flux style config (no quant convs, shift factor);
    "sdxl" the SDXL scaling factor; ``None`` the SD 1.x one.
    """
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_blocks("DownEncoderBlock2D", "UpDecoderBlock2D", latent_channels, norm_num_groups,
                                      block_out_channels, sample_size=sample_size, **_VAE_FLAVOURS[flow]))


def finish(pipe, default_sample_size: int | None = None, video: tuple[int, int, int] | None = None):
    """Put every torch module on CPU in float32 and ``.eval()`` mode, disable the progress bar, and set the
    default size hints: ``default_sample_size`` (latent side) for image pipelines that have one, and for
    video pipelines ``video = (height, width, num_frames)`` as ``pipe.default_height`` / ``default_width``
    / ``default_num_frames`` (read by evosearch's video Steppers when a request does not give them)."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in component.parameters()):
                component.to(device="cpu", dtype=torch.float32)
            component.eval()
    if default_sample_size is not None and hasattr(pipe, "default_sample_size"):
        pipe.default_sample_size = default_sample_size
    pipe.set_progress_bar_config(disable=True)
    if video is not None:
        pipe.default_height, pipe.default_width, pipe.default_num_frames = video
    return pipe
