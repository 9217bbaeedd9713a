"""The embedded flux-tiny: its training script, and the quality of the weights the package ships."""

from __future__ import annotations

import json

import numpy as np
import torch

from seer.evaluate import harness, shapes
from seer.export.source import embedded_dir


def test_training_script_runs_and_is_deterministic(tmp_path):
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    from seer.export.tiny import TrainConfig, main

    for name in ("a", "b"):
        assert main(["--quick", "--out", str(tmp_path / name)]) == 0
    for part in ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        a, b = load_file(tmp_path / "a" / part), load_file(tmp_path / "b" / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    pipe = FluxPipeline.from_pretrained(tmp_path / "a", dtype=torch.float32)
    assert pipe.tokenizer_2.model_max_length == 16 and not pipe.transformer.config.guidance_embeds
    report = json.loads((tmp_path / "a" / "training.json").read_text())
    assert report["config"] == {**TrainConfig.quick().__dict__} and 0 <= report["eval"]["accuracy"] <= 1
    # FLUX's latent normalisation is measured on the training latents, not left at its defaults
    assert pipe.vae.config.scaling_factor != 1.0 and pipe.vae.config.shift_factor != 0.0


def test_shipped_weights_are_small_and_loadable():
    from diffusers import FluxPipeline

    files = [f for f in embedded_dir().rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 8 * 2**20
    pipe = FluxPipeline.from_pretrained(embedded_dir(), dtype=torch.float32)
    for word in {w for p in shapes.PROMPTS for w in p.split()}:  # every word of the world is one T5 token
        assert len(pipe.tokenizer_2.tokenize(word)) == 1, word


def test_shipped_model_follows_prompts(engine_modules):
    """The unaccelerated shipped model draws what the prompt asks (the judge is exact on renders)."""
    prompts = harness.load_prompts(18)
    report = harness.evaluate([engine_modules], [harness.ScheduleSpec(no_cache=True)], prompts, [0], steps=28)
    assert report["rows"][0]["prompt_following"] >= 0.8, report["rows"][0]["attributes"]


def test_prompts_give_different_correct_images(engine_modules):
    from seer.runtime.pipeline import Pipeline

    pipe = Pipeline.load(engine_modules)
    a, b = "a red circle at the top left", "a blue square at the bottom right"
    img_a, img_b = (np.asarray(pipe(p, seed=0, no_cache=True).image) for p in (a, b))
    assert shapes.judge(img_a, a).correct and shapes.judge(img_b, b).correct
    assert not shapes.judge(img_a, b).correct
