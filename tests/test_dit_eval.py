"""seer-eval and seer-bench on DiT engine directories: classes in place of prompts, on the tiny random
DiT of test_dit_pipeline (offline). The oracles are independent of the harness: the runtime's own
Schedule and a hand count for full steps, the Pipeline called directly for what a class name or
--guidance must draw, the shapes judge run again on the saved images, and diffusers' DiTPipeline on
the same weights for the bench's peer row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from seer.errors import UsageError
from seer.evaluate import harness, shapes
from seer.evaluate.cli import bench_main, main as eval_main
from seer.runtime.pipeline import Pipeline
from seer.runtime.schedule import Schedule

from cli_contract import one_line_error, run as run_cli
from dit_models import LABELS, build_dit

STEPS = 10


def _export(tmp_path_factory, model, name, **kw):
    from seer.export.dit_export import export_dit

    out = tmp_path_factory.mktemp("engines") / name
    export_dit(str(model), out, max_order=2, log=lambda m: None, **kw)
    return out


@pytest.fixture(scope="module")
def engine_shapes_dit(tmp_path_factory):
    """The same tiny random DiT labelled with the shapes world's classes, as dit-tiny is."""
    model = build_dit(tmp_path_factory.mktemp("dit-shapes") / "pipeline")
    index = model / "model_index.json"
    meta = json.loads(index.read_text())
    meta["id2label"] = {str(k): v for k, v in shapes.CLASS_LABELS.items()}
    index.write_text(json.dumps(meta))
    return _export(tmp_path_factory, model, "dit-shapes", cache="lite")


def _eval(args) -> tuple[int, str]:
    return run_cli(args, main=eval_main)


def test_eval_rows_on_a_dit(engine_dit, tmp_path):
    out = tmp_path / "eval.json"
    code, text = _eval([engine_dit, "-s", "none", "-s", "4/2/2", "--steps", STEPS, "--json", out])
    assert code == 0, text
    report = json.loads(out.read_text())
    assert report["conditioning"] == "class" and "prompts" not in report
    # no shapes-world labels: the first labelled ids, all five of them (fewer than the default 36)
    assert report["classes"] == len(LABELS) and report["images_per_row"] == len(LABELS)
    assert report["guidance_scale"] == 4.0  # the directory's default
    rows = {row["schedule"]: row for row in report["rows"]}
    none, cached = rows["none"], rows["4/2/2"]
    assert none["psnr_db"]["min"] == harness.PSNR_CAP and none["ssim"]["min"] == 1.0 and none["full_steps"] == STEPS
    # TaylorSeer-DiT's schedule by hand: steps 0 and 1 full (warm-up), then every 4th: 5 and 9
    assert cached["full_steps"] == sum(Schedule.taylorseer(STEPS, 4, 2).full) == 4
    assert cached["psnr_db"]["mean"] < harness.PSNR_CAP
    for row in rows.values():  # labels that name no shapes-world class: fidelity only
        assert row["class_following"] is None and row["judged"] == 0 and "prompt_following" not in row
        assert [im["class"] for im in row["images"]] == sorted(LABELS)
        assert [im["label"] for im in row["images"]] == [LABELS[i] for i in sorted(LABELS)]
    assert "class follow %" in text and "5 images per row (5 classes x seeds [0])" in text
    # seer-bench's default of 8 classes takes all five; a count asked for is held to what there is
    pipe = Pipeline.load(engine_dit)
    assert harness.conditions_for(pipe, default_count=8).values == tuple(sorted(LABELS))
    with pytest.raises(UsageError, match="between 1 and 5"):
        harness.conditions_for(pipe, count=8)


def test_class_names_and_guidance_reach_the_pipeline(engine_dit, tmp_path):
    """A class file's names and ids resolve through the model's labels; the reference images are what
    the Pipeline draws for those ids at the --guidance given."""
    classes = tmp_path / "classes.txt"
    classes.write_text("# two names and an id\ngoldfish\n  White Shark \n0\n")
    out, images = tmp_path / "eval.json", tmp_path / "images"
    code, text = _eval([engine_dit, "-s", "none", "--class-file", classes, "--guidance", 1.5, "--steps", 4,
                        "--json", out, "--images", images])
    assert code == 0, text
    report = json.loads(out.read_text())
    assert [im["class"] for im in report["rows"][0]["images"]] == [1, 3, 0] and report["guidance_scale"] == 1.5
    pipe = Pipeline.load(engine_dit)
    for n, class_id in enumerate([1, 3, 0]):
        saved = np.asarray(Image.open(images / "reference" / f"{n:03d}-seed0.png"))
        direct = pipe(class_labels=[class_id], seed=0, steps=4, guidance_scale=1.5, no_cache=True).image
        assert np.array_equal(saved, np.asarray(direct))
    at_default = pipe(class_labels=[1], seed=0, steps=4, no_cache=True).image  # guidance 4: another image
    assert not np.array_equal(np.asarray(Image.open(images / "reference" / "000-seed0.png")), np.asarray(at_default))
    # --classes takes the first N of the file
    code, text = _eval([engine_dit, "-s", "none", "--class-file", classes, "--classes", 1, "--steps", 2])
    assert code == 0 and "1 images per row (1 classes" in text, text


def test_shapes_world_classes_are_judged(engine_shapes_dit, tmp_path):
    """dit-tiny's labels: the balanced class set by default, each image judged against its class's Spec
    with the size left open (the judge run again here on the saved images)."""
    out, images = tmp_path / "eval.json", tmp_path / "images"
    code, text = _eval([engine_shapes_dit, "-s", "none", "--steps", 3, "--json", out, "--images", images])
    assert code == 0, text
    report = json.loads(out.read_text())
    ids = shapes.class_eval_ids(36)
    row = report["rows"][0]
    assert report["classes"] == 36 and [im["class"] for im in row["images"]] == ids
    assert [im["label"] for im in row["images"]] == [shapes.CLASS_LABELS[i] for i in ids]
    assert row["judged"] == 36 and row["attributes"]["size"] == 1.0  # a class leaves the size open
    verdicts = [shapes.judge(np.asarray(Image.open(images / "reference" / f"{n:03d}-seed0.png")),
                             shapes.Spec(None, *[getattr(shapes.CLASSES[i], a) for a in ("colour", "shape", "place")]))
                for n, i in enumerate(ids)]
    assert row["class_following"] == sum(v.correct for v in verdicts) / 36
    assert harness.conditions_for(Pipeline.load(engine_shapes_dit), default_count=8).values == \
        tuple(shapes.class_eval_ids(8))
    code, text = _eval([engine_shapes_dit, "-s", "none", "--classes", 91])
    one_line_error(code, text, "--classes must be between 1 and 90")


def test_a_flux_and_dit_mix_is_refused(engine_modules, engine_dit):
    code, text = _eval([engine_modules, engine_dit, "-s", "none"])
    one_line_error(code, text, "different conditions", "flux-tiny (flux) takes prompts", "dit (dit) takes class labels",
                   "one kind")
    code, text = run_cli([engine_dit, engine_modules, "--repeats", 1], main=bench_main)
    one_line_error(code, text, "different conditions")
    with pytest.raises(UsageError, match="different conditions"):
        harness.evaluate([engine_modules, engine_dit], [harness.ScheduleSpec(no_cache=True)], None, [0])
    # each kind's options name the other's
    one_line_error(*_eval([engine_dit, "--prompts", 2]), "--prompts does not apply", "class-conditional (DiT)",
                   "--classes or --class-file")
    one_line_error(*_eval([engine_modules, "--classes", 2]), "--classes does not apply", "text-to-image (FLUX)",
                   "--prompts or --prompt-file")
    one_line_error(*run_cli([engine_dit, "--prompts", 1], main=bench_main), "use --classes instead")
    one_line_error(*_eval([engine_dit, "--class-file", "missing.txt"]), "one class id or name per line")


def test_bench_on_a_dit(engine_dit, tmp_path):
    code, text = run_cli([engine_dit, "--classes", 1, "--repeats", 1, "--steps", 4, "--no-memory",
                          "--out", tmp_path], main=bench_main)
    assert code == 0, text
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["family"] == "dit" and report["classes"] == 1 and report["timed_class"] == 0
    ours = {row["schedule"]: row for row in report["rows"]}
    # DiT's default schedules; no diffusers: twin, since diffusers' hook has no DiT row to match
    assert set(ours) == {"none", "4/2/2", "6/1/3", "4/2/3"}
    assert ours["4/2/2"]["full_steps"] == sum(Schedule.taylorseer(4, 4, 2).full)
    assert ours["4/2/2"]["psnr_db"] < harness.PSNR_CAP and ours["none"]["psnr_db"] == harness.PSNR_CAP
    assert all("class_following" in row for row in report["rows"])
    # diffusers' DiTPipeline without a cache on the same weights, class, guidance and seed draws our
    # --no-cache image; its cache hooks do not run on DiT, so it has no other row
    (peer,) = report["peers"]
    assert peer["method"] == "diffusers" and peer["schedule"] == "none" and peer["full_steps"] == 4
    assert peer["psnr_db"] > 40, peer
    assert "FirstBlockCache" in report["peer_note"]
    md = (tmp_path / "bench.md").read_text()
    assert "| class follow % |" in md and "1 classes x seeds [0]" in md and "DiTPipeline" in md


def test_peak_memory_of_dit_rows(engine_dit, dit_model):
    from seer.evaluate import bench

    common = {"condition": 1, "seed": 0, "steps": 2, "backend": "onnxruntime", "device": "cpu", "schedule": "none"}
    ours = bench.peak_memory({**common, "kind": "seer", "engine_dir": str(engine_dit)})
    theirs = bench.peak_memory({**common, "kind": "diffusers", "model": str(dit_model), "row": 0, "family": "dit",
                                "guidance": 4.0})
    assert 20 < ours["peak_rss_mib"] < theirs["peak_rss_mib"], (ours, theirs)
