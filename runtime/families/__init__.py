"""Model families on the runtime side: what differs between FLUX, DiT and the next model, and nothing
else. The denoising loop (runtime/pipeline.py) calls these methods and knows no family by name.

A family is built from the engine directory (`Family(directory, manifest, backend)`) and says:

- `conditions(prompt, class_labels)`: the request's conditioning, checked (a prompt for a
  text-to-image model, class ids or names for a class-conditional one; the other is refused);
- `check(height, width)`: the sizes it generates; `check_unguided(scale)`: whether a guidance scale
  given to a model without guidance is ignored (FLUX.1-schnell, as FluxPipeline does) or refused (a DiT
  without an unconditional class cannot apply classifier-free guidance);
- `condition(conditions, height, width, guided)`: the graph inputs that stay fixed over the steps (text
  encodings and rotary tables; class labels), for classifier-free guidance (`guided`) the conditional
  rows followed by as many unconditional ones;
- `sequence(height, width)`: image and context tokens (the memory estimate's terms and the sampler's
  image_seq_len);
- `noise_shape`, `latents_from_noise`, `decoder_latents`: the latent layout (FLUX packs 2x2 patches
  into tokens; DiT keeps [B, C, h, w] and patches inside the graph);
- `prediction(output)`: the channels of the transformer's output the sampler steps with (DiT's
  learned-sigma models output twice the latent channels and use the first half).
"""

from __future__ import annotations

from ...errors import EngineDirError
from .dit import DitFamily
from .flux import FluxFamily

FAMILIES = {cls.name: cls for cls in (FluxFamily, DitFamily)}


def family_for(directory, manifest: dict, backend):
    cls = FAMILIES.get(manifest["model"].get("family"))
    if cls is None:
        raise EngineDirError(f"this engine directory's model family {str(manifest['model'].get('family'))[:60]!r} is "
                             f"not one this seer runs ({', '.join(FAMILIES)}); upgrade seer")
    return cls(directory, manifest, backend)
