"""Tiny, random-weight, fully offline diffusers pipelines for tests and benchmarks.

Every factory here builds a real diffusers pipeline class out of components
constructed from configs (never from the Hugging Face hub), the same way
diffusers' own test-suite does in ``get_dummy_components``.  Nothing is
downloaded; the tokenizers are built locally:

* CLIP: a byte-level ``CLIPTokenizer`` over a 514-entry vocabulary (the 256
  byte-level unicode characters, their ``</w>`` variants, ``<|startoftext|>``
  = 512 and ``<|endoftext|>`` = 513) with no BPE merges, so every word is
  spelled out byte by byte. ``model_max_length`` is 77 as in real CLIP.
* T5: a ``T5TokenizerFast`` over a character-level Unigram model (``<pad>`` = 0,
  ``</s>`` = 1, ``<unk>`` = 2, ``"▁"``, the printable ASCII characters and their
  ``"▁"``-prefixed variants; 192 entries) with a ``$A </s>`` post-processor,
  ``model_max_length`` 512.

The tokenizer files are written once per process to a temporary directory
(removed at exit) and re-loaded for every pipeline, so repeated calls are cheap.

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

import atexit
import json
import os
import shutil
import string
import tempfile
import threading
from collections.abc import Sequence

import torch

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
]

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

# --------------------------------------------------------------------------------------
# Tokenizers (built locally, files cached per process)
# --------------------------------------------------------------------------------------

_TOKENIZER_DIR: str | None = None
_TOKENIZER_LOCK = threading.Lock()


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte -> printable unicode character table, in byte order of CLIP."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return [chr(c) for c in cs]


def _clip_vocab() -> dict[str, int]:
    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def _t5_vocab() -> list[tuple[str, float]]:
    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -2.5) for c in chars]
    vocab += [(c, -3.0) for c in chars]
    return vocab


CLIP_VOCAB_SIZE = len(_clip_vocab())  # 514
CLIP_BOS_ID = CLIP_VOCAB_SIZE - 2  # <|startoftext|>
CLIP_EOS_ID = CLIP_VOCAB_SIZE - 1  # <|endoftext|> (also the pad token, as in real CLIP)
T5_VOCAB_SIZE = len(_t5_vocab())  # 192


def _remove_dir(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked child must not delete its parent's files
        shutil.rmtree(path, ignore_errors=True)


def _tokenizer_dir() -> str:
    """Write the tokenizer files once per process; return the directory."""
    global _TOKENIZER_DIR
    with _TOKENIZER_LOCK:
        if _TOKENIZER_DIR is not None and os.path.isdir(_TOKENIZER_DIR):
            return _TOKENIZER_DIR
        root = tempfile.mkdtemp(prefix="evosearch-tiny-tokenizers-")
        atexit.register(_remove_dir, root, os.getpid())

        clip_dir = os.path.join(root, "clip")
        os.makedirs(clip_dir)
        with open(os.path.join(clip_dir, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(_clip_vocab(), f, ensure_ascii=False)
        with open(os.path.join(clip_dir, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")  # header line only: no merges
        with open(os.path.join(clip_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"model_max_length": CLIP_MAX_LENGTH}, f)

        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

        t5 = Tokenizer(models.Unigram(_t5_vocab(), unk_id=2, byte_fallback=False))
        t5.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
            ]
        )
        t5.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
        t5.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
        )
        t5_dir = os.path.join(root, "t5")
        os.makedirs(t5_dir)
        t5.save(os.path.join(t5_dir, "tokenizer.json"))

        _TOKENIZER_DIR = root
        return root


def clip_tokenizer():
    """A fresh byte-level ``CLIPTokenizer`` (vocab 514, bos 512, eos = pad = 513, max length 77)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        os.path.join(_tokenizer_dir(), "clip"), model_max_length=CLIP_MAX_LENGTH
    )


def t5_tokenizer():
    """A fresh character-level ``T5TokenizerFast`` (vocab 192, pad 0, eos 1, unk 2, max length 512)."""
    path = os.path.join(_tokenizer_dir(), "t5", "tokenizer.json")
    kwargs = dict(
        tokenizer_file=path,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=T5_MAX_LENGTH,
    )
    try:
        from transformers import T5TokenizerFast

        return T5TokenizerFast(extra_ids=0, **kwargs)
    except Exception:  # pragma: no cover - fallback for unusual transformers builds
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(**kwargs)


# --------------------------------------------------------------------------------------
# Model helpers
# --------------------------------------------------------------------------------------


def _build(seed: int, offset: int, fn):
    """Call ``fn()`` with the torch RNG seeded to ``seed + offset``, restoring the global RNG after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + offset)
        module = fn()
    return module


def _clip_config(hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        projection_dim=projection_dim,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=CLIP_BOS_ID,
        eos_token_id=CLIP_EOS_ID,  # != 2, so pooling uses the first <|endoftext|> position
        pad_token_id=CLIP_EOS_ID,
    )


def _t5_encoder(d_model=32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=T5_VOCAB_SIZE,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _vae(latent_channels=4, block_out_channels=(8, 8, 8, 8), norm_num_groups=4, sample_size=64, flow=None):
    """A 4-level AutoencoderKL (vae_scale_factor 8) with tiny channel counts.

    ``flow`` = "sd3" / "flux" gives the SD3 / Flux style config (no quant convs, shift factor).
    """
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    kwargs = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
    )
    if flow == "sd3":
        kwargs.update(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305)
    elif flow == "flux":
        kwargs.update(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    elif flow == "sdxl":
        kwargs.update(scaling_factor=0.13025)
    else:
        kwargs.update(scaling_factor=0.18215)
    return AutoencoderKL(**kwargs)


def _ddim():
    from diffusers import DDIMScheduler

    # the Stable Diffusion v1.5 scheduler config, DDIM flavour
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _finish(pipe, default_sample_size: int | None = None):
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in component.parameters()):
                component.to(device="cpu", dtype=torch.float32)
            component.eval()
    if default_sample_size is not None and hasattr(pipe, "default_sample_size"):
        pipe.default_sample_size = default_sample_size
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------


def tiny_sd(seed: int = 0):
    """Tiny random ``StableDiffusionPipeline`` (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, DDIM).

    Default 64x64 px -> latent (B, 4, 8, 8); CLIP text embeddings (B, 77, 32).
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = _build(
        seed,
        0,
        lambda: UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=4,
        ),
    )
    vae = _build(seed, 1, lambda: _vae(latent_channels=4))
    text_encoder = _build(seed, 2, lambda: CLIPTextModel(_clip_config()))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return _finish(pipe)


def tiny_sdxl(seed: int = 0):
    """Tiny random ``StableDiffusionXLPipeline`` (two CLIP encoders, UNet with ``text_time`` added conditioning).

    Default 64x64 px -> latent (B, 4, 8, 8); prompt embeds (B, 77, 64) (= 32 + 32 from the two
    encoders' penultimate layers), pooled (B, 32) from ``CLIPTextModelWithProjection``.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    addition_time_embed_dim = 8
    pooled_dim = 32
    unet = _build(
        seed,
        0,
        lambda: UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=addition_time_embed_dim,
            # 6 micro-conditioning numbers (orig size, crop, target size) + pooled text embedding
            projection_class_embeddings_input_dim=6 * addition_time_embed_dim + pooled_dim,
            norm_num_groups=4,
        ),
    )
    vae = _build(seed, 1, lambda: _vae(latent_channels=4, flow="sdxl"))
    text_encoder = _build(seed, 2, lambda: CLIPTextModel(_clip_config()))
    text_encoder_2 = _build(seed, 3, lambda: CLIPTextModelWithProjection(_clip_config(projection_dim=pooled_dim)))
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return _finish(pipe)


def tiny_sd3(seed: int = 0):
    """Tiny random ``StableDiffusion3Pipeline`` (SD3Transformer2DModel, 2x CLIP-with-projection + T5).

    Default 64x64 px -> latent (B, 16, 8, 8) (patch size 2 -> 16 image tokens).
    Prompt embeds (B, 77 + max_sequence_length, 64): the two CLIPs' penultimate states
    (32 + 32) zero-padded to the T5 width 64, concatenated with T5 states along the sequence.
    Pooled (B, 64) = two 32-d CLIP projections. Scheduler: FlowMatchEuler, shift 3.0, no dynamic shifting.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    transformer = _build(
        seed,
        0,
        lambda: SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=64,  # T5 width
            caption_projection_dim=32,  # must equal heads * head_dim
            pooled_projection_dim=64,  # 2 x CLIP projection_dim
            pos_embed_max_size=32,
        ),
    )
    vae = _build(seed, 1, lambda: _vae(latent_channels=16, flow="sd3"))
    text_encoder = _build(seed, 2, lambda: CLIPTextModelWithProjection(_clip_config()))
    text_encoder_2 = _build(seed, 3, lambda: CLIPTextModelWithProjection(_clip_config()))
    text_encoder_3 = _build(seed, 4, lambda: _t5_encoder(d_model=64))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer(),
        image_encoder=None,
        feature_extractor=None,
    )
    return _finish(pipe)


def tiny_flux(seed: int = 0):
    """Tiny random ``FluxPipeline`` (FluxTransformer2DModel with guidance embeds, CLIP + T5).

    Default 64x64 px -> VAE latent (B, 16, 8, 8), packed for the transformer into 2x2 patches
    (B, 16, 64); ``latent_image_ids`` (16, 3); T5 prompt embeds (B, max_sequence_length, 32),
    pooled CLIP (B, 32), ``text_ids`` (max_sequence_length, 3). Scheduler: FlowMatchEuler with the
    FLUX.1 dynamic-shifting config.

    ``pipe.default_sample_size`` is set to 8 (the stock pipeline hard-codes 128, i.e. 1024 px).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    transformer = _build(
        seed,
        0,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels x 2 x 2 packing
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,  # T5 width
            pooled_projection_dim=32,  # CLIP pooler width
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
        ),
    )
    vae = _build(seed, 1, lambda: _vae(latent_channels=16, flow="flux"))
    text_encoder = _build(seed, 2, lambda: CLIPTextModel(_clip_config()))
    text_encoder_2 = _build(seed, 3, lambda: _t5_encoder(d_model=32))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    return _finish(pipe, default_sample_size=8)


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
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8, got {resolution}")
    block_out_channels = tuple(int(c) for c in block_out_channels)
    n = len(block_out_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    unet = _build(
        seed,
        0,
        lambda: UNet2DConditionModel(
            sample_size=resolution // 8,
            in_channels=4,
            out_channels=4,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            down_block_types=down,
            up_block_types=up,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            norm_num_groups=32 if all(c % 32 == 0 for c in block_out_channels) else 8,
        ),
    )
    vae = _build(seed, 1, lambda: _vae(latent_channels=4, sample_size=resolution))
    text_encoder = _build(
        seed,
        2,
        lambda: CLIPTextModel(
            _clip_config(
                hidden_size=cross_attention_dim, num_attention_heads=4, intermediate_size=2 * cross_attention_dim
            )
        ),
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return _finish(pipe)


# --------------------------------------------------------------------------------------
# Video factories (Wan, Wan image-to-video, CogVideoX, LTX-Video, HunyuanVideo)
# --------------------------------------------------------------------------------------
#
# Built like diffusers' own tests' ``get_dummy_components`` for these pipelines, with the
# local tokenizers above instead of hub downloads. Video pipelines have no small default
# size (Wan draws 81 frames at 480x832 by default), so each factory sets three hints that
# evosearch's video Steppers read when a request does not give them:
# ``pipe.default_height``, ``pipe.default_width`` and ``pipe.default_num_frames``.
#
# ==================  ===========================  ====================================  =================
# factory             pipeline                     latent state at the defaults          scheduler
# ==================  ===========================  ====================================  =================
# tiny_wan            WanPipeline                  (B, 16, 3, 4, 4)   9 frames, 32x32   FlowMatchEuler (shift 7)
# tiny_wan_i2v        WanImageToVideoPipeline      (B, 16, 3, 4, 4)   + 20-ch condition FlowMatchEuler (shift 7)
# tiny_cogvideox      CogVideoXPipeline            (B, 3, 4, 2, 2)    9 frames, 16x16   CogVideoXDDIM (v-pred,
#                                                  (frames before channels)               snr shift 3, zero SNR)
# tiny_ltx            LTXPipeline                  (B, 3*8*8, 8) packed 9 frames 32x32  FlowMatchEuler (dynamic)
# tiny_hunyuan_video  HunyuanVideoPipeline         (B, 4, 3, 2, 2)    9 frames, 16x16   FlowMatchEuler (shift 7)
# ==================  ===========================  ====================================  =================

__all__ += ["tiny_wan", "tiny_wan_i2v", "tiny_cogvideox", "tiny_ltx", "tiny_hunyuan_video", "llama_tokenizer"]


def llama_tokenizer():
    """The character-level vocabulary of :func:`t5_tokenizer` as a ``LlamaTokenizerFast`` (pad 0, eos 1, right padding),
    standing in for HunyuanVideo's Llama tokenizer."""
    from transformers import LlamaTokenizerFast

    path = os.path.join(_tokenizer_dir(), "t5", "tokenizer.json")
    return LlamaTokenizerFast(tokenizer_file=path, bos_token="<pad>", eos_token="</s>", unk_token="<unk>",
                              pad_token="<pad>", padding_side="right", model_max_length=T5_MAX_LENGTH)


def _video_defaults(pipe, height: int, width: int, num_frames: int):
    pipe.default_height, pipe.default_width, pipe.default_num_frames = height, width, num_frames
    return pipe


def _wan_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def _wan_transformer(in_channels: int = 16, image_dim: int | None = None):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=in_channels, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                 num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                 rope_max_seq_len=32, image_dim=image_dim)


def tiny_wan(seed: int = 0):
    """Tiny random ``WanPipeline`` (WanTransformer3DModel, AutoencoderKLWan, T5 encoder).

    Defaults 9 frames at 32x32 px -> latent (B, 16, 3, 4, 4) (temporal factor 4, spatial 8);
    T5 prompt embeds (B, max_sequence_length, 32). Scheduler: FlowMatchEuler, shift 7 (as diffusers' test).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=_build(seed, 2, lambda: _t5_encoder(d_model=32)),
        vae=_build(seed, 1, _wan_vae),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=_build(seed, 0, _wan_transformer),
    )
    return _video_defaults(_finish(pipe), 32, 32, 9)


def tiny_wan_i2v(seed: int = 0, image_encoder: bool = True):
    """Tiny random ``WanImageToVideoPipeline`` (Wan 2.1 layout: the transformer sees 16 noise + 4 mask + 16
    condition-latent channels; with ``image_encoder`` a tiny CLIP vision tower feeds ``image_dim=4`` embeddings).
    Defaults 9 frames at 32x32 px."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder = processor = None
    if image_encoder:
        encoder = _build(seed, 3, lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=1)))
        processor = CLIPImageProcessor(crop_size=32, size=32)
    pipe = WanImageToVideoPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=_build(seed, 2, lambda: _t5_encoder(d_model=32)),
        vae=_build(seed, 1, _wan_vae),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=_build(seed, 0, lambda: _wan_transformer(in_channels=36, image_dim=4 if image_encoder else None)),
        image_encoder=encoder,
        image_processor=processor,
    )
    return _video_defaults(_finish(pipe), 32, 32, 9)


def tiny_cogvideox(seed: int = 0):
    """Tiny random ``CogVideoXPipeline`` (CogVideoXTransformer3DModel, AutoencoderKLCogVideoX, T5 encoder) with
    the CogVideoX-2b scheduler config: ``CogVideoXDDIMScheduler`` (v-prediction, SNR shift 3, zero terminal SNR,
    trailing spacing). Defaults 9 frames at 16x16 px -> latent (B, 3, 4, 2, 2): frames before channels."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    transformer = _build(seed, 0, lambda: CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=1, sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=32))
    vae = _build(seed, 1, lambda: AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4))
    scheduler = CogVideoXDDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
        rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing")
    pipe = CogVideoXPipeline(tokenizer=t5_tokenizer(), text_encoder=_build(seed, 2, lambda: _t5_encoder(d_model=32)),
                             vae=vae, transformer=transformer, scheduler=scheduler)
    return _video_defaults(_finish(pipe), 16, 16, 9)


def tiny_ltx(seed: int = 0):
    """Tiny random ``LTXPipeline`` (LTXVideoTransformer3DModel, AutoencoderKLLTXVideo, T5 encoder).

    Defaults 9 frames at 32x32 px -> VAE latent (B, 8, 3, 8, 8) (temporal and spatial factor 4 here), packed
    for the transformer into tokens (B, 3*8*8, 8). Scheduler: FlowMatchEuler with LTX-Video's dynamic-shifting
    config (shift from the video sequence length).
    """
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    transformer = _build(seed, 0, lambda: LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32))

    def vae_fn():
        vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                    spatio_temporal_scaling=(True, True, False, False),
                                    layers_per_block=(1, 1, 1, 1, 1), decoder_block_out_channels=(8, 8, 8, 8),
                                    decoder_spatio_temporal_scaling=(True, True, False, False),
                                    decoder_layers_per_block=(1, 1, 1, 1, 1), patch_size=1, patch_size_t=1,
                                    encoder_causal=True, decoder_causal=False)
        vae.use_framewise_encoding = False
        vae.use_framewise_decoding = False
        return vae

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
        base_image_seq_len=1024, max_image_seq_len=4096)
    pipe = LTXPipeline(scheduler=scheduler, vae=_build(seed, 1, vae_fn),
                       text_encoder=_build(seed, 2, lambda: _t5_encoder(d_model=32)), tokenizer=t5_tokenizer(),
                       transformer=transformer)
    return _video_defaults(_finish(pipe), 32, 32, 9)


def tiny_hunyuan_video(seed: int = 0):
    """Tiny random ``HunyuanVideoPipeline`` (HunyuanVideoTransformer3DModel with guidance embeds, Llama + CLIP text
    encoders, AutoencoderKLHunyuanVideo). Defaults 9 frames at 16x16 px -> latent (B, 4, 3, 2, 2).
    The Llama tokenizer is :func:`llama_tokenizer` (character level). Scheduler: FlowMatchEuler, shift 7."""
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    from transformers import CLIPTextModel, LlamaConfig, LlamaModel

    transformer = _build(seed, 0, lambda: HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4)))
    vae = _build(seed, 1, lambda: AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True))
    llama = _build(seed, 2, lambda: LlamaModel(LlamaConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=0, hidden_size=16, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=T5_VOCAB_SIZE, hidden_act="gelu", max_position_embeddings=1024)))
    clip = _build(seed, 3, lambda: CLIPTextModel(_clip_config(hidden_size=8, projection_dim=8, num_attention_heads=4)))
    pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=llama_tokenizer(), transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
                                tokenizer_2=clip_tokenizer())
    return _video_defaults(_finish(pipe), 16, 16, 9)
