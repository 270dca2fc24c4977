"""The shapes world's generators: text-conditioned pixel-space diffusers pipelines.

Both variants share one architecture, built here so that training and loading agree:

* a word-level tokenizer over the grammar's vocabulary (``PreTrainedTokenizerFast`` built
  with the ``tokenizers`` library, no download), ``<bos> words <eos>`` padded to 12 tokens;
* a small ``CLIPTextModel`` (2 layers, width 64) trained with the generator;
* a ``UNet2DConditionModel`` on 32x32x3 pixels in [-1, 1]: cross-attention to the token
  states at 8x8, and the pooled text embedding added to the time embedding of every block
  (``class_embed_type="projection"``), a stronger path for the prompt than attention alone.
  The pooled embedding is ``CLIPTextModel``'s own ``pooler_output``; with this tokenizer's
  end-of-text id (2) transformers takes it at the highest token id of the prompt, not at the
  end of text, so it sees the prompt up to that word (training and sampling agree; the
  cross-attention path sees every token). The learned reward pools at the end of text.

:class:`ShapesPipeline` is the ``diffusion`` variant (v-prediction, cosine schedule,
``DDIMScheduler`` with "trailing" spacing, x0 clipped to [-1, 1]); :class:`ShapesFlowPipeline`
the ``flow`` variant (velocity, ``FlowMatchEulerDiscreteScheduler``). Classifier-free
guidance uses the empty prompt, which training showed the model 10% of the time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput
from diffusers import UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from .grammar import VOCABULARY, normalize_prompt, parse_prompt
from .render import IMAGE_SIZE

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
MAX_LENGTH = 12
TEXT_WIDTH = 64


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the grammar (ids: specials first, then VOCABULARY)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + VOCABULARY)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=MAX_LENGTH, padding_side="right")


def build_text_encoder(tokenizer: PreTrainedTokenizerFast) -> CLIPTextModel:
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, projection_dim=TEXT_WIDTH)
    return CLIPTextModel(config).eval()


def build_unet() -> UNet2DConditionModel:
    """2.5M parameters: channels (32, 64, 96), one ResNet per level, cross-attention at 8x8 only."""
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64, 96),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=8,
        class_embed_type="projection", projection_class_embeddings_input_dim=TEXT_WIDTH,
    ).eval()


def build_scheduler(variant: str):
    if variant == "diffusion":
        return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                             prediction_type="v_prediction", clip_sample=True, clip_sample_range=1.0,
                             set_alpha_to_one=True, timestep_spacing="trailing")
    if variant == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    raise ValueError(f"variant: expected 'diffusion' or 'flow', got {variant!r}")


class _ShapesPipelineBase(DiffusionPipeline):
    """Prompt encoding and the sampling loop shared by both variants."""

    model_cpu_offload_seq = "text_encoder->unet"
    default_num_inference_steps: int = 25
    default_guidance_scale: float = 2.0

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerFast,
                 scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @staticmethod
    def check_prompt(prompt, name: str = "prompt") -> str:
        """``prompt`` normalised, or a ValueError naming ``name`` and the grammar (empty allowed for negatives)."""
        if name != "prompt" and (prompt is None or prompt == ""):
            return ""
        try:
            parse_prompt(prompt)
        except ValueError as err:
            raise ValueError(str(err).replace("prompt:", f"{name}:", 1)) from None
        return normalize_prompt(prompt)

    def _encode_text(self, texts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer(list(texts), padding="max_length", max_length=MAX_LENGTH, truncation=True,
                             return_tensors="pt").input_ids.to(device)
        out = self.text_encoder(ids)
        return out.last_hidden_state, out.pooler_output

    @torch.no_grad()
    def encode_prompt(self, prompt: str | Sequence[str], device=None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt: str | None = None):
        """(prompt_embeds (N, 12, 64), negative_prompt_embeds or None, pooled (N, 64), negative_pooled or None)."""
        device = device if device is not None else self._execution_device
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = [self.check_prompt(p) for p in prompts]
        pe, pooled = self._encode_text(texts, device)
        pe, pooled = pe.repeat_interleave(num_images_per_prompt, 0), pooled.repeat_interleave(num_images_per_prompt, 0)
        if not do_classifier_free_guidance:
            return pe, None, pooled, None
        npe, npooled = self._encode_text([self.check_prompt(negative_prompt, "negative_prompt")], device)
        return pe, npe.expand_as(pe), pooled, npooled.expand_as(pooled)

    def stepper_conditioning(self, prompt: str, negative_prompt: str | None, do_classifier_free_guidance: bool,
                             device) -> tuple[dict, dict | None]:
        """Per-request conditioning for a Stepper: ({"embeds", "pooled"} of the prompt, of the negative
        prompt or None), each with a leading batch dimension of 1 (see :meth:`denoiser_output`)."""
        pe, npe, pooled, npooled = self.encode_prompt(prompt, device, 1, do_classifier_free_guidance, negative_prompt)
        cond = {"embeds": pe, "pooled": pooled}
        return cond, ({"embeds": npe, "pooled": npooled} if do_classifier_free_guidance else None)

    def default_judge(self):
        """The world's exact judge (a SearchPipeline uses it unless told otherwise)."""
        from .judge import Judge

        return Judge()

    def denoiser_output(self, sample: torch.Tensor, timestep, embeds: torch.Tensor, pooled: torch.Tensor):
        """The UNet's raw output for a batch (v for both variants, in each variant's own sense)."""
        return self.unet(sample, timestep, encoder_hidden_states=embeds, class_labels=pooled, return_dict=False)[0]

    def _step(self, model_output, t, sample, eta, generator):
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], num_images_per_prompt: int = 1,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 negative_prompt: str | None = None, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt: expected a prompt or a non-empty list of prompts")
        if not isinstance(num_images_per_prompt, int) or isinstance(num_images_per_prompt, bool) \
                or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt: expected an int >= 1, got {num_images_per_prompt!r}")
        steps = self.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 1000:
            raise ValueError(f"num_inference_steps: expected an int in 1..1000, got {steps!r}")
        g = float(self.default_guidance_scale if guidance_scale is None else guidance_scale)
        if not np.isfinite(g) or g < 0:
            raise ValueError(f"guidance_scale: expected a finite float >= 0, got {guidance_scale!r}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type: expected one of 'pil', 'np', 'pt', got {output_type!r}")
        device = self._execution_device
        cfg = g > 1.0
        pe, npe, pooled, npooled = self.encode_prompt(prompts, device, num_images_per_prompt, cfg, negative_prompt)
        n = pe.shape[0]
        shape = (n, 3, IMAGE_SIZE, IMAGE_SIZE)
        if latents is None:
            sample = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
            sample = latents.to(device, torch.float32)
        self.scheduler.set_timesteps(steps, device=device)
        if cfg:
            pe, pooled = torch.cat([npe, pe]), torch.cat([npooled, pooled])
        for t in self.progress_bar(self.scheduler.timesteps):
            x_in = torch.cat([sample, sample]) if cfg else sample
            out = self.denoiser_output(x_in, t.expand(x_in.shape[0]), pe, pooled)
            if cfg:
                out_u, out_c = out.chunk(2)
                out = out_u + g * (out_c - out_u)
            sample = self._step(out, t, sample, eta, generator)
        image = (sample / 2 + 0.5).clamp(0, 1).cpu()
        if output_type == "pt":
            images = image
        else:
            images = image.permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


class ShapesPipeline(_ShapesPipelineBase):
    """The diffusion variant: DDIM (``eta`` 0 deterministic, 1 ancestral) with classifier-free guidance."""

    stepper_family = "diffusion"

    def _step(self, model_output, t, sample, eta, generator):
        return self.scheduler.step(model_output, t, sample, eta=eta, generator=generator,
                                   use_clipped_model_output=True).prev_sample


class ShapesFlowPipeline(_ShapesPipelineBase):
    """The flow variant: rectified flow ``x_t = (1 - t) x0 + t eps``, velocity ``eps - x0``, Euler steps."""

    stepper_family = "flow"

    def _step(self, model_output, t, sample, eta, generator):
        return self.scheduler.step(model_output, t, sample).prev_sample
