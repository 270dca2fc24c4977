"""Steppers: one per model family, each built from an existing diffusers pipeline object."""

from ..core.stepper import Stepper
from .diffusion import DiffusionStepper
from .flow import FlowStepper

SUPPORTED_PIPELINES = (
    "StableDiffusionPipeline", "StableDiffusionXLPipeline", "DDPMPipeline", "DDIMPipeline",
    "StableDiffusion3Pipeline", "FluxPipeline", "WanPipeline", "CogVideoXPipeline", "LTXPipeline",
    "HunyuanVideoPipeline", "WanImageToVideoPipeline (segments)",
    "the bundled worlds' pipelines (evosearch.bundled: shapes, digits, var_digits, moving_digits)",
    "GaussianMixtureDiffusionPipeline / GaussianMixtureFlowPipeline (evosearch.testbed)",
    "VARPipeline (FoundationVision VAR / Infinity, evosearch.pipelines.var)",
    "any pipeline with stepper_family = 'diffusion' | 'flow' and stepper_conditioning/denoiser_output",
)


def stepper_for(pipe, max_batch_size: int = 16, eta: float = 1.0) -> Stepper:
    """The Stepper of ``pipe``'s family; a clear error for pipelines no family covers."""
    from diffusers import DDIMPipeline, DDPMPipeline, FluxPipeline, StableDiffusion3Pipeline
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from ..core.validation import ParameterError

    family = getattr(pipe, "stepper_family", None)  # pipelines that name their family (bundled worlds, testbed)
    if family == "flow":
        return FlowStepper(pipe, max_batch_size=max_batch_size, eta=eta)
    if family == "diffusion":
        return DiffusionStepper(pipe, max_batch_size=max_batch_size, eta=eta)
    if family == "var":  # next-scale models: VARDigitsPipeline, VARPipeline(FoundationVARAdapter / InfinityAdapter)
        from .var import VARStepper

        return VARStepper(pipe, max_batch_size=max_batch_size, eta=eta)
    from .segments import SegmentStepper, segment_model_for
    from .video import video_stepper_for

    video = video_stepper_for(pipe, max_batch_size=max_batch_size, eta=eta)
    if video is not None:
        return video
    segments = segment_model_for(pipe)  # MovingDigitsPipeline (bundled), WanImageToVideoPipeline
    if segments is not None:
        return SegmentStepper(segments, max_batch_size=max_batch_size, eta=eta)
    if isinstance(pipe, (StableDiffusion3Pipeline, FluxPipeline)):
        return FlowStepper(pipe, max_batch_size=max_batch_size, eta=eta)
    if isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline, DDPMPipeline, DDIMPipeline)) or (
        hasattr(pipe, "unet") and hasattr(pipe, "null_class_label")
    ):
        return DiffusionStepper(pipe, max_batch_size=max_batch_size, eta=eta)
    raise ParameterError(f"pipe: {type(pipe).__name__} is not supported; supported pipelines: "
                         + ", ".join(SUPPORTED_PIPELINES))


__all__ = ["Stepper", "DiffusionStepper", "FlowStepper", "stepper_for", "SUPPORTED_PIPELINES"]
