"""seer: TaylorSeer feature forecasting for diffusion transformers, shipped as engine directories.

Subpackages (imports point downward only): ``seer.calib`` -> ``seer.export`` -> ``seer.runtime``
-> ``seer.engines``.
"""

__version__ = "0.1.0"
