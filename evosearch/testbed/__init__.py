"""An exact testbed: a Gaussian-mixture "model" with a closed-form denoiser.

The data distribution is a mixture of K Gaussians in D dimensions with diagonal
covariances, ``p(x) = sum_k pi_k N(x; mu_k, diag(var_k))``. Under the forward process
``x_t = a_t x0 + s_t eps`` every marginal is again a mixture,
``p_t(x) = sum_k pi_k N(x; a_t mu_k, diag(a_t^2 var_k + s_t^2))``, and the posterior
mean is exact::

    E[x0 | x_t] = sum_k r_k(x_t) [mu_k + a_t var_k (x_t - a_t mu_k) / (a_t^2 var_k + s_t^2)]

with responsibilities ``r_k(x_t)`` proportional to ``pi_k p_t(x_t | k)``. From it follow the
exact epsilon ``(x_t - a_t E[x0|x_t]) / s_t``, the VP v-prediction ``a_t eps - s_t x0``
and the rectified-flow velocity ``eps - x0``. These are wrapped as diffusers models
(``ModelMixin`` + ``ConfigMixin``; they save and load with ``save_pretrained`` /
``from_pretrained``) and as diffusers pipelines that the real Steppers drive:

* ``diffusion`` family: :class:`GaussianMixtureUNet` (a ``UNet2DModel``-like denoiser,
  epsilon or v_prediction, a_t and s_t from the scheduler's ``alphas_cumprod`` at the
  integer timestep) in :class:`GaussianMixtureDiffusionPipeline` (unet + DDIMScheduler
  or DDPMScheduler), driven by :class:`~evosearch.pipelines.DiffusionStepper`;
* ``flow`` family: :class:`GaussianMixtureTransformer` (velocity, timesteps in
  ``FlowMatchEulerDiscreteScheduler`` units, sigma * 1000) in
  :class:`GaussianMixtureFlowPipeline` (transformer + FlowMatchEulerDiscreteScheduler),
  driven by :class:`~evosearch.pipelines.FlowStepper` (its "unconditional" kind).

State layout: a sample x in R^D is the state ``(1, 1, D)``, so a batch of states is
``(N, 1, 1, D)``: a one-channel, 1 x D "image". ``Stepper.finish`` returns the raw,
unclamped samples (the pipelines define ``samples_to_images``), expanded to three
channels, ``(N, 3, 1, D)``, which passes through ``Reward.__call__``; a reward reads
``x = images[:, 0, 0, :]`` (:func:`samples_from`). Note that a SearchPipeline output
stores images as uint8 (clamped to [0, 1]), so read samples from the rewards or
from ``SearchPipeline.replay_states(lineage)``, not from ``out.images``.

Closed forms for checking search methods: :meth:`GaussianMixture.log_prob`,
:meth:`~GaussianMixture.mode_of`, :func:`tilted_mixture` (``p(x) exp(lam r(x))`` for a
linear reward is again a mixture) and :func:`best_of_n_mode_probs` /
:func:`best_of_n_reward_cdf` (the order statistics of Best-of-N with a projection reward).

    >>> gm = GaussianMixture(weights=[0.5, 0.3, 0.2], means=[[-2, 0], [2, 0], [0, 2.5]], variances=0.25)
    >>> pipe = gaussian_mixture_pipeline(gm, family="diffusion", prediction_type="epsilon")
    >>> stepper = stepper_for(pipe, max_batch_size=4096, eta=1.0)

Modules: :mod:`~evosearch.testbed.mixture` (the distribution), :mod:`~evosearch.testbed.layout`
(states <-> samples, the projection reward), :mod:`~evosearch.testbed.models` (the diffusers
models), :mod:`~evosearch.testbed.pipelines` (the diffusers pipelines) and
:mod:`~evosearch.testbed.closed_forms`; every name is importable from ``evosearch.testbed``.
"""

from .closed_forms import best_of_n_mode_probs, best_of_n_reward_cdf, tilted_mixture
from .layout import projection_reward, samples_from, samples_to_states
from .mixture import GaussianMixture
from .models import GaussianMixtureModelOutput, GaussianMixtureTransformer, GaussianMixtureUNet
from .pipelines import (GaussianMixtureDiffusionPipeline, GaussianMixtureFlowPipeline, GaussianMixtureOutput,
                        gaussian_mixture_pipeline)

__all__ = [
    "GaussianMixture", "GaussianMixtureUNet", "GaussianMixtureTransformer", "GaussianMixtureDiffusionPipeline",
    "GaussianMixtureFlowPipeline", "GaussianMixtureOutput", "GaussianMixtureModelOutput", "gaussian_mixture_pipeline",
    "samples_from", "samples_to_states", "tilted_mixture", "best_of_n_mode_probs", "best_of_n_reward_cdf",
    "projection_reward",
]
