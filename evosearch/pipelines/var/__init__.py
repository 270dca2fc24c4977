"""The ``var`` family: next-scale prediction models (VAR, Infinity, the bundled VAR digits model).

A next-scale model generates an image as a pyramid of token maps, coarse to fine: at
scale k a transformer that has seen every earlier scale (block-causal attention, with
a KV cache) predicts all ``h_k x w_k`` tokens of scale k at once; their embeddings are
upsampled and added to an accumulated feature map ``f_hat``; ``f_hat`` resized to the
next scale is that scale's input; the decoder turns the final ``f_hat`` into pixels.

One Stepper step is one scale::

    stepper.prepare("3", guidance_scale=2.0, top_k=0, top_p=0.0, temperature=1.0)
    s = stepper.start(seeds)                         # VARState at scale 0 (nothing sampled yet)
    for k in range(stepper.num_steps):               # num_steps == number of scales
        s = stepper.step(s, k, stepper.sample_noise([derive_seed(seed, k) for seed in seeds]))
    images = stepper.finish(s)                       # (N, 3, H, W) in [0, 1]

**State.** A :class:`VARState` (not a tensor) holds, for N samples, everything the
next step needs: ``f_hat`` (accumulated features, (N, ...)), ``next_input`` (the raw
input of the next scale, (N, tokens, channels)), ``kv`` (one key and one value cache
per attention layer, each (N, G, ...) where G = 2 with classifier-free guidance: the
conditional and unconditional rows of a sample sit together in one row, so every
selection keeps them paired), ``tokens`` (the sampled token map of each generated
scale, (N, draws)) and ``extra`` (adapter-specific per-row tensors). ``len(state)`` is N;
``state[a:b]``, :meth:`VARState.select` and :meth:`VARState.cat` index and join every
piece at once; ``Stepper.select`` / ``Stepper.concat`` dispatch to them, so search code
that only selects and concatenates rows works unchanged (BestOfN, TTS-VAR, replay).

**Randomness.** A step samples scale k's tokens from the guided logits; the randomness
is passed in: ``noise`` holds one uniform in [0, 1) per categorical draw
(:meth:`VARStepper.sample_noise` draws row k from a CPU generator seeded with
``seeds[k]``, shape (N, max draws over scales); step k uses the first ``draws(k)``
columns). Each draw is inverse-CDF sampling of the top-k / top-p filtered,
temperature-scaled distribution (``u`` -> the first token whose cumulative probability
exceeds ``u``), an exact sample of that distribution and a deterministic function of
``u``: one uniform per draw is all the randomness (Gumbel-max would need one per
category). ``noise=None`` (or ``temperature=0``, or ``top_k=1``) is greedy (argmax);
:meth:`VARStepper.noise_scale` is then 0, else 1 (it only says whether a step is stochastic: there
is no Gaussian std in a token sampler).

**Guidance.** With guidance scale g the logits are ``u + g_k (c - u)`` (c, u: the
conditional and unconditional logits); ``cfg_schedule="constant"`` uses g_k = g,
``"linear"`` ramps it as VAR does, g_k = 1 + (g - 1) k / (K - 1). g == 1 skips the
unconditional rows entirely (G = 1). (FoundationVision VAR writes its ``cfg`` as
``(1 + t) c - t u``: g = 1 + cfg; Infinity writes ``cfg c + (1 - cfg) u``: g = cfg.)

**Compute accounting.** One NFE is one sample through one scale (one transformer pass
over that scale's tokens; with guidance one batched cond+uncond pass, the papers'
unit), so a full sample costs K NFE (K = number of scales) and best-of-n costs n K.
Scales are not equally expensive: :attr:`VARStepper.tokens` also counts token
positions predicted (per sample, not doubled for guidance), and search statistics
report both. :meth:`VARStepper.preview` decodes the current ``f_hat`` and costs no NFE (a decode).

**Models.** The Stepper drives a :class:`VARAdapter`, a small object that exposes a
model by its public parts: :meth:`~VARAdapter.forward` (one scale through the
transformer, KV caches in and out), :meth:`~VARAdapter.update` (embed sampled tokens
into ``f_hat`` and the next input) and :meth:`~VARAdapter.decode`. Adapters here:

- the bundled VAR digits model (:mod:`evosearch.bundled.var_digits`, ``VARDigitsPipeline``);
- :class:`FoundationVARAdapter` for FoundationVision's class-conditional VAR
  (https://github.com/FoundationVision/VAR): wrap a ``VAR`` model object as
  ``VARPipeline(FoundationVARAdapter(var))``; prompts are ImageNet class ids, the
  defaults are VAR's FID-evaluation settings (the parts it uses:
  :mod:`evosearch.pipelines.var.foundation`).
- :class:`InfinityAdapter` for FoundationVision's Infinity text-to-image models
  (https://github.com/FoundationVision/Infinity): ``VARPipeline(InfinityAdapter(
  infinity, vae, text_tokenizer, text_encoder, scale_schedule))``; prompts are text
  (T5), tokens are bit labels (the parts it uses, guidance and sampling settings:
  :mod:`evosearch.pipelines.var.infinity`).

Neither model's code is copied: the adapters call these attributes, so they follow
whatever version of the model object they are given. They need the model code
importable (``models.var`` / ``infinity.models.infinity``; e.g. a checkout on
``sys.path``, which ``EVOSEARCH_VAR_REPO`` / ``EVOSEARCH_INFINITY_REPO`` do for the tests);
their tests skip otherwise.

**Modules.** :mod:`~evosearch.pipelines.var.state` (:class:`VARState`),
:mod:`~evosearch.pipelines.var.sampling` (:func:`filter_logits`, :func:`sample_tokens`),
:mod:`~evosearch.pipelines.var.adapter` (:class:`VARAdapter`),
:mod:`~evosearch.pipelines.var.stepper` (:class:`VARStepper`, :data:`CFG_SCHEDULES`),
:mod:`~evosearch.pipelines.var.pipeline` (:class:`VARPipeline`),
:mod:`~evosearch.pipelines.var.caches` (KV caches in and out of external models' attention modules),
:mod:`~evosearch.pipelines.var.foundation` (:class:`FoundationVARAdapter`),
:mod:`~evosearch.pipelines.var.infinity` (:class:`InfinityAdapter`). Every public name is
importable from :mod:`evosearch.pipelines.var`.
"""

from .adapter import VARAdapter
from .foundation import FoundationVARAdapter
from .infinity import InfinityAdapter
from .pipeline import VARPipeline
from .sampling import filter_logits, sample_tokens
from .state import NOT_A_LATENT, VARState
from .stepper import CFG_SCHEDULES, VARStepper

__all__ = ["VARState", "VARStepper", "VARAdapter", "VARPipeline", "FoundationVARAdapter", "InfinityAdapter",
           "sample_tokens", "filter_logits", "CFG_SCHEDULES"]
