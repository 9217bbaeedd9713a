"""The DiT family end to end on a tiny random DiT-XL/2-shaped pipeline built offline (diffusers' own
DiT test config): seer-export, then seer's one pipeline, against diffusers' DiTPipeline and a float64
reference of TaylorSeer-DiT's math; and every bad input as one error line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from seer.errors import EngineDirError, UsageError
from seer.runtime.pipeline import Pipeline

from cli_contract import one_line_error, run as run_cli
from dit_models import build_dit

STEPS = 10


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def diffusers_run(model_dir, labels, guidance, seed, steps=STEPS, dtype=torch.float32, hooks=None):
    """DiTPipeline's final latents (what it hands the VAE, times the scaling factor) and images."""
    from diffusers import DiTPipeline
    from diffusers.pipelines.dit import pipeline_dit

    pipe = DiTPipeline.from_pretrained(model_dir).to(dtype)
    seen = {}
    decode = pipe.vae.decode

    def capture(latents, *a, **k):
        seen["latents"] = latents.float() * pipe.vae.config.scaling_factor
        return decode(latents.to(pipe.vae.dtype), *a, **k)
    pipe.vae.decode = capture
    draw = pipeline_dit.randn_tensor

    def float32_noise(shape, generator=None, device=None, dtype=None, **k):  # the same draws in every dtype
        return draw(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)
    pipeline_dit.randn_tensor = float32_noise
    try:
        if hooks:
            hooks(pipe.transformer)
        with torch.no_grad():
            images = pipe(class_labels=labels, guidance_scale=guidance, num_inference_steps=steps,
                          generator=torch.Generator().manual_seed(seed), output_type="np").images
    finally:
        pipeline_dit.randn_tensor = draw
    return seen["latents"].numpy(), images


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_no_cache_matches_diffusers(engine_dit, dit_model, guidance):
    """The same weights, classes, guidance and seed: seer's loop (DDIM, classifier-free guidance by batch
    doubling on the eps channels, the learned-sigma split) against DiTPipeline, float32."""
    ref, images = diffusers_run(dit_model, [3, 1], guidance, seed=5)
    pipe = Pipeline.load(engine_dit)
    g = pipe(class_labels=[3, "goldfish"], seed=5, steps=STEPS, guidance_scale=guidance, no_cache=True,
             return_latents=True)
    assert g.latents.shape == ref.shape == (2, 4, 8, 8)
    assert rel_err(g.latents, ref) < 1e-5  # measured 5e-7 to 1.1e-6
    ours = np.stack([np.asarray(im, np.float32) / 255 for im in g.images])
    assert np.abs(ours - images).max() <= 1 / 255 + 1e-6 and g.image.size == (16, 16)


def test_guidance_changes_the_result_and_one_is_no_guidance(engine_dit):
    pipe = Pipeline.load(engine_dit)
    kw = dict(class_labels=[0], seed=1, steps=4, no_cache=True, return_latents=True)
    a, b, c = (pipe(**kw, guidance_scale=s).latents for s in (1.0, 0.5, 4.0))
    assert np.array_equal(a, b)  # at or below 1 DiTPipeline runs no unconditional batch
    assert rel_err(c, a) > 1e-3


def official_taylorseer_dit(model_dir, labels, guidance, seed, interval, order, warmup, steps=STEPS):
    """TaylorSeer-DiT's math in float64 on diffusers' own modules: at a full step every block's
    attention and MLP outputs are recorded and turned into Taylor factors (a dict per module, replaced
    at each full step, an order formed only when the previous step had the one below); at a forecast
    step forward hooks replace those outputs by sum_i factor_i k^i / i! (the rest of the network runs
    as diffusers runs it). The schedule is the official one: the first `warmup` steps full, then a full
    step every `interval`, derivatives from step warmup - 1 on."""
    state = {"step": -1, "full": True, "last": None, "cache": {}}

    def count(_module, _args):
        state["step"] += 1
        i = state["step"]
        if i < warmup:
            state["counter"], state["full"] = 0, True
        else:
            state["counter"] += 1
            state["full"] = state["counter"] == interval
            if state["full"]:
                state["counter"] = 0
        if state["full"]:
            state["distance"] = None if state["last"] is None else i - state["last"]
            state["last"] = i

    def module_hook(key):
        def hook(_module, _args, output):
            i, cache = state["step"], state["cache"]
            if state["full"]:
                old = cache.get(key, {})
                new = {0: output.detach().clone()}
                for j in range(order):
                    if j in old and i > warmup - 2:
                        new[j + 1] = (new[j] - old[j]) / state["distance"]
                    else:
                        break
                cache[key] = new
                return None
            k = i - state["last"]
            return sum(f * k**j / math.factorial(j) for j, f in cache[key].items())
        return hook

    def install(transformer):
        transformer.register_forward_pre_hook(count)
        for n, block in enumerate(transformer.transformer_blocks):
            block.attn1.register_forward_hook(module_hook((n, "attn")))
            block.ff.register_forward_hook(module_hook((n, "mlp")))

    return diffusers_run(model_dir, labels, guidance, seed, steps=steps, dtype=torch.float64, hooks=install)[0]


@pytest.mark.parametrize("interval, order, warmup", [(4, 2, 2), (3, 1, 2), (2, 2, 3)])
def test_cached_matches_float64_official_taylorseer(engine_dit, dit_model, interval, order, warmup):
    """Caching on, classifier-free guidance on (one Taylor state over both halves): seer's forecast
    graph and Taylor state against the official recurrence in float64 at the same schedule."""
    ref = official_taylorseer_dit(dit_model, [3, 1], 4.0, 5, interval, order, warmup)
    pipe = Pipeline.load(engine_dit)
    g = pipe(class_labels=[3, 1], seed=5, steps=STEPS, guidance_scale=4.0, interval=interval, order=order,
             warmup=warmup, return_latents=True)
    assert len(g.schedule.full_steps) < STEPS
    assert rel_err(g.latents, ref) < 1e-5  # measured 5e-7 to 1.1e-6
    exact = pipe(class_labels=[3, 1], seed=5, steps=STEPS, guidance_scale=4.0, no_cache=True, return_latents=True)
    assert rel_err(g.latents, exact.latents) > 1e-5  # the forecast really differs from running every step


def test_onnxruntime_matches_torch_step_by_step(engine_dit):
    def trajectory(backend):
        pipe = Pipeline.load(engine_dit, backend=backend, trust_torch_programs=True)
        seen = []
        pipe(class_labels=[0, 3], seed=2, steps=STEPS, guidance_scale=3.0, interval=3, order=2,
             warmup=2, on_step=lambda i, full, x: seen.append(np.array(pipe.backend.numpy(x), np.float32)))
        return seen

    ours, reference = trajectory("onnxruntime"), trajectory("torch")
    assert len(ours) == STEPS
    for a, b in zip(ours, reference):
        assert rel_err(a, b) < 1e-4


def test_lite_cache_forecasts_the_output(engine_dit_lite, engine_dit):
    lite = Pipeline.load(engine_dit_lite)
    kw = dict(class_labels=[1], seed=0, steps=STEPS, guidance_scale=4.0, return_latents=True)
    exact = lite(**kw, no_cache=True).latents
    assert rel_err(exact, Pipeline.load(engine_dit)(**kw, no_cache=True).latents) < 1e-6
    cached = lite(**kw, interval=3, order=1, warmup=2)
    assert len(cached.schedule.full_steps) < STEPS and 0 < rel_err(cached.latents, exact) < 0.5


def test_manifest_describes_the_family(engine_dit):
    m = json.loads((engine_dit / "manifest.json").read_text())
    assert m["schema_version"] == 4 and m["model"]["family"] == "dit"
    assert m["sampler"]["type"] == "ddim" and m["guidance"] == {"kind": "cfg"}
    assert m["classes"]["count"] == 1000 and m["classes"]["null_class"] == 1000
    assert m["classes"]["labels"]["2"] == "crane" and set(m["graphs"]) == {"full", "forecast", "vae_decoder"}
    assert m["dims"] == {"B_model": "G * B"} and m["defaults"]["height"] == 16
    assert len(m["cache"]["streams"]) == 4  # attention and MLP of each of the 2 blocks


@pytest.mark.parametrize("kwargs, message", [
    (dict(class_labels=[7]), "class 7 is not a class of this model"),
    (dict(class_labels=[1000]), "class 1000 is not a class"),
    (dict(class_labels=["tenchh"]), "did you mean 'tench'"),
    (dict(class_labels=["crane"]), "names several classes (2, 4)"),
    (dict(class_labels=[]), "no class given"),
    (dict(prompt="a red circle"), "class-conditional"),
    (dict(class_labels=[1], height=32, width=32), "16x16 images only"),
])
def test_bad_requests_name_the_problem(engine_dit, kwargs, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Pipeline.load(engine_dit)(steps=2, **kwargs)


def test_class_names_and_synonyms(engine_dit):
    pipe = Pipeline.load(engine_dit)
    kw = dict(seed=0, steps=2, no_cache=True, return_latents=True)
    assert np.array_equal(pipe(class_labels=["Tinca tinca"], **kw).latents, pipe(class_labels=[0], **kw).latents)
    assert np.array_equal(pipe(class_labels="goldfish", **kw).latents, pipe(class_labels=["1"], **kw).latents)


def test_cli(engine_dit, tmp_path):
    out = tmp_path / "x.png"
    code, output = run_cli([engine_dit, "--class", "white shark", "--steps", "4", "--json", "--out", out])
    assert code == 0 and out.is_file(), output
    assert json.loads(output.strip().splitlines()[-1])["class"] == "white shark"
    for args, words in [
        (["--class", "999"], ["class 999 is not a class"]),
        (["--prompt", "a fish"], ["class-conditional", "--class"]),
        ([], ["no class given"]),
        (["--class", "goldfsh"], ["did you mean 'goldfish'"]),
    ]:
        one_line_error(*run_cli([engine_dit, *args, "--steps", "2", "--out", tmp_path / "y.png"]), *words)
    assert not (tmp_path / "y.png").exists()


def test_no_unconditional_class_refuses_guidance(engine_dit, tmp_path):
    """A class-conditional model trained without label dropout has no unconditional class (diffusers'
    DiT always has one, so the manifest says it here): guidance above 1 is refused by name."""
    import shutil

    out = tmp_path / "engine"
    shutil.copytree(engine_dit, out)
    m = json.loads((out / "manifest.json").read_text())
    del m["classes"]["null_class"]
    m["guidance"], m["defaults"]["guidance_scale"] = {"kind": "none"}, 1.0
    (out / "manifest.json").write_text(json.dumps(m))
    pipe = Pipeline.load(out)
    assert pipe(class_labels=[1], steps=2).image  # the default scale (1) needs no guidance
    with pytest.raises(UsageError, match="no unconditional class"):
        pipe(class_labels=[1], steps=2, guidance_scale=4.0)
    one_line_error(*run_cli([out, "--class", "1", "--guidance", "4", "--steps", "2", "--out", tmp_path / "x.png"]),
                   "no unconditional class", "--guidance 1")
    m["guidance"] = {"kind": "cfg"}  # cfg with nothing to guide against: a damaged manifest
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineDirError, match="names no null_class"):
        Pipeline.load(out)


def test_flux_refuses_class_labels(engine_modules):
    with pytest.raises(UsageError, match="takes a prompt, not class labels"):
        Pipeline.load(engine_modules)(class_labels=[1], steps=2)


def test_warmup_runs_every_graph(engine_dit):
    pipe = Pipeline.load(engine_dit)
    ran, real_run = [], pipe.backend.run
    pipe.backend.run = lambda graph, *a, **kw: ran.append(graph) or real_run(graph, *a, **kw)
    pipe.warmup()
    assert set(ran) == {"full", "forecast", "vae_decoder"} and ran.count("full") >= 2


def test_tensorrt_profiles_come_from_the_manifest(engine_dit):
    """No TensorRT needed: the optimization profile seer-build would build, from `dims` alone. The
    transformer's batch spans one image unguided to twice the largest batch guided."""
    from seer.engines import tensorrt_build as tb

    m = json.loads((engine_dit / "manifest.json").read_text())
    shapes = tb.profile_shapes(m, tb.BuildOptions(batch=(1, 2, 4)))
    assert shapes["full"]["hidden_states"] == {"min": [1, 4, 8, 8], "opt": [4, 4, 8, 8], "max": [8, 4, 8, 8]}
    assert shapes["forecast"]["factor_0"]["max"] == [4, 8, 16, 16]
    assert shapes["vae_decoder"]["latents"] == {"min": [1, 4, 8, 8], "opt": [2, 4, 8, 8], "max": [4, 4, 8, 8]}
    with pytest.raises(UsageError, match="16x16 images only"):
        tb.BuildOptions(sizes=((32, 32),) * 3).validate(m)


def test_seer_export_takes_a_dit_pipeline_directory(dit_model, tmp_path):
    """The CLI picks the exporter by the pipeline class its model_index.json names; FLUX-only options
    are refused by name for a DiT pipeline."""
    from seer.export.cli import main as export_main

    code, output = run_cli([dit_model, "--out", tmp_path / "e", "--cache", "lite", "--max-order", "1"],
                           main=export_main)
    assert code == 0, output
    m = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert m["model"]["family"] == "dit" and m["cache"]["max_order"] == 1 and "digest sha256:" in output
    for flag, words in ((["--fp8"], ["--fp8 applies to FLUX exports only"]),
                        (["--max-sequence-length", "8"], ["--max-sequence-length applies to FLUX"])):
        one_line_error(*run_cli([dit_model, "--out", tmp_path / "f", *flag], main=export_main), *words)
    assert not (tmp_path / "f").exists()


def test_embedded_dit_tiny_follows_classes_through_seer(tmp_path):
    """The shipped dit-tiny, exported by name and run by seer with TaylorSeer-DiT's default schedule:
    the shapes judge (no learned weights) reads back the class asked for."""
    from seer.evaluate import shapes
    from seer.export.dit_export import export_dit

    export_dit("dit-tiny", tmp_path / "e", log=lambda m: None)
    pipe = Pipeline.load(tmp_path / "e")
    ids = shapes.class_eval_ids(8)
    g = pipe(class_labels=ids, seed=0, steps=25)
    assert len(g.schedule.full_steps) < 25
    right = [shapes.judge(np.asarray(im), shapes.CLASSES[i]).correct for im, i in zip(g.images, ids)]
    assert sum(right) >= 7, right
    named = pipe(class_labels=[shapes.CLASS_LABELS[ids[0]]], seed=0, steps=25)
    assert np.array_equal(np.asarray(named.image), np.asarray(g.images[0]))  # a batch row equals it alone


def test_a_dit_saved_as_pytorch_bin_exports(tmp_path):
    """Older hub repos (DiT-XL-2-256's era) hold .bin weights: they are sized with torch's weights-only
    loader and export like safetensors ones."""
    from diffusers import DiTPipeline

    from seer.export.dit_export import export_dit

    model = build_dit(tmp_path / "st")
    DiTPipeline.from_pretrained(model).save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert not list((tmp_path / "bin" / "transformer").glob("*.safetensors"))
    a, b = tmp_path / "a", tmp_path / "b"
    export_dit(str(model), a, max_order=1, log=lambda m: None)
    export_dit(str(tmp_path / "bin"), b, max_order=1, log=lambda m: None)
    kw = dict(class_labels=[1], seed=0, steps=3, return_latents=True)
    assert np.array_equal(Pipeline.load(a)(**kw).latents, Pipeline.load(b)(**kw).latents)
