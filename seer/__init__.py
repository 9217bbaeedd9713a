"""seer: TaylorSeer feature forecasting for diffusion transformers, shipped as engine directories.

    from seer import Pipeline
    pipe = Pipeline.load("out/flux-tiny")            # any family: FLUX, DiT
    pipe("a red circle").image                       # FLUX: a prompt
    Pipeline.load("out/dit-tiny")(class_labels=["red circle at the top left"]).image   # DiT: classes

Subpackages (imports point downward only): ``seer.calib`` -> ``seer.export`` -> ``seer.runtime``
-> ``seer.engines``.
"""

__version__ = "0.1.0"
__all__ = ["Pipeline", "Generation", "__version__"]


def __getattr__(name: str):
    """`Pipeline` and `Generation` on first use: `import seer` alone (the CLIs' error helpers) stays light."""
    if name in ("Pipeline", "Generation"):
        from .runtime import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'seer' has no attribute {name!r}")
