"""What a manifest may say: its JSON Schema (manifest.schema.json, types and bounds of every value
the runtime reads) and the rules one schema cannot state (the graphs' interfaces agree with the
model, cache and text sections). Both run before any file is opened or any buffer allocated, so a
damaged or hostile manifest is refused with the key it got wrong, never honoured or half-used.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from ..errors import EngineDirError, UsageError
from .shapes import dim_values, symbols

SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    # JSON Schema counts 64.0 as an integer; a reader that sizes buffers or loops with it must not
    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine("integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    return jsonschema.validators.extend(base, type_checker=strict)(schema)


def validate(manifest: Any, where: str) -> None:
    """Raise EngineDirError naming the first problem: schema, then consistency."""
    # a wrong kind (a const or enum: "ddim" where flow_match_euler belongs) says more than what it then lacks
    errors = sorted(_validator().iter_errors(manifest),
                    key=lambda e: (e.validator not in ("const", "enum"), list(map(str, e.absolute_path)), e.message))
    if errors:
        e = errors[0]
        raise EngineDirError(f"{where}: {_key(manifest, e.absolute_path)}: {_message(e)}; the manifest is damaged or "
                             "not seer's, re-export the engine directory")
    problem = _inconsistency(manifest)
    if problem:
        raise EngineDirError(f"{where}: {problem}; the manifest is damaged or not seer's, re-export the engine "
                             "directory")


def _key(manifest: Any, path) -> str:
    """`graphs.forecast.inputs[4] (factor_0).dtype`: the path, with the tensor's name where there is one."""
    out, node = "", manifest
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part]
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name'][:40]})"
        else:
            out += f".{part}" if out else str(part)
            node = node[part]
    return out or "the manifest"


def _message(error) -> str:
    shown = json.dumps(error.instance)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if error.validator == "pattern" and "inside the directory" in str(error.schema.get("description", "")):
        return f"{shown} is not a path inside the directory (relative, '/'-separated, no '.' or '..' parts)"
    if error.validator == "pattern":
        return f"{shown} is not of the form {error.validator_value}"
    if error.validator in ("required", "additionalProperties", "propertyNames", "minProperties"):
        return error.message
    return re.sub(r"^.*? is ", f"{shown} is ", error.message, count=1) if " is " in error.message else error.message


def _static(shape: list, i: int) -> int | None:
    """Dimension i of a declared shape when it is a number, else None (symbolic or absent)."""
    return shape[i] if -len(shape) <= i < len(shape) and isinstance(shape[i], int) else None


def _interfaces(m: dict) -> dict[str, tuple[list[str], list[str]]]:
    """graph -> (input names, output names) the runtime binds, for this manifest's family and options."""
    cache, cfg = m["cache"], m["model"]["config"]
    lite = cache["granularity"] == "lite"
    factors = [f"factor_{i}" for i in range(cache["max_order"] + 1)]
    features = [] if lite else ["features"]
    if m["model"]["family"] == "flux":
        step = ["hidden_states", "pooled_projections", "timestep"] + (["guidance"] if cfg["guidance"] else [])
        return {
            "clip": (["input_ids"], ["pooled_projections"]),
            "t5": (["input_ids"], ["encoder_hidden_states"]),
            "full": ([*step, "encoder_hidden_states", "rope_cos", "rope_sin"], ["sample", *features]),
            "forecast": (([] if lite else step) + ["coefficients", *factors], ["sample"]),
            "vae_decoder": (["latents"], ["image"]),
        }
    step = ["hidden_states", "timestep", "class_labels"]
    return {
        "full": (step, ["sample", *features]),
        "forecast": (([] if lite else step) + ["coefficients", *factors], ["sample"]),
        "vae_decoder": (["latents"], ["image"]),
    }


def _family_inconsistency(m: dict, graphs: dict) -> tuple[str | None, list]:
    """The first disagreement specific to the family, and the (where, declared, implied) sizes to compare."""
    cfg, latent = m["model"]["config"], m["latent"]
    guidance = m["guidance"]["kind"]
    if m["model"]["family"] == "flux":
        text = m["text"]
        if (guidance == "embedded") != cfg["guidance"]:
            return (f"guidance.kind {guidance!r} disagrees with model.config.guidance {cfg['guidance']}: a FLUX "
                    "transformer with a guidance input takes embedded guidance, one without takes none"), []
        if sum(cfg["axes_dims_rope"]) != cfg["head_dim"]:
            return (f"model.config.axes_dims_rope {cfg['axes_dims_rope']} does not add up to head_dim "
                    f"{cfg['head_dim']}"), []
        if latent["packed_channels"] != 4 * latent["channels"] or cfg["in_channels"] != latent["packed_channels"]:
            return (f"latent.packed_channels {latent['packed_channels']} must be 4 x latent.channels "
                    f"({latent['channels']}) and equal model.config.in_channels ({cfg['in_channels']})"), []
        t = 2 * latent["vae_scale_factor"]  # pixels per token side: one token per 2x2 latent pixels
        if _dims(m, 1, 5 * t, 7 * t, 1, ("N_img", "H_latent", "W_latent")) != (35, 5, 7):
            return (f"dims {m['dims']} do not describe FLUX's 2x2 packing of a vae_scale_factor "
                    f"{latent['vae_scale_factor']} latent (N_img = (H // {t}) * (W // {t}))"), []
        s = m["sampler"]
        if s.get("use_dynamic_shifting", True) and s.get("max_image_seq_len", 4096) == s.get("base_image_seq_len", 256):
            return "sampler.max_image_seq_len equals base_image_seq_len: the dynamic shift is undefined", []
        return None, [
            ("graphs.clip.inputs input_ids", _static(graphs["clip"][0]["input_ids"]["shape"], 1),
             text["clip"]["max_length"]),
            ("graphs.t5.inputs input_ids", _static(graphs["t5"][0]["input_ids"]["shape"], 1), text["t5"]["max_length"]),
            ("graphs.full.inputs hidden_states", _static(graphs["full"][0]["hidden_states"]["shape"], -1),
             latent["packed_channels"]),
            ("graphs.full.inputs rope_cos", _static(graphs["full"][0]["rope_cos"]["shape"], -1), cfg["head_dim"]),
            ("graphs.full.outputs sample", _static(graphs["full"][1]["sample"]["shape"], -1), cfg["out_channels"]),
        ]
    classes = m["classes"]
    if classes["count"] != cfg["num_classes"]:
        return f"classes.count {classes['count']} differs from model.config.num_classes {cfg['num_classes']}", []
    if "null_class" in classes and classes["null_class"] < classes["count"]:
        return (f"classes.null_class {classes['null_class']} is one of the {classes['count']} classes; the "
                "unconditional class comes after them"), []
    if guidance == "cfg" and "null_class" not in classes:
        return "guidance.kind is cfg but classes names no null_class to guide against", []
    big = [k for k in classes.get("labels", {}) if int(k) >= classes["count"]]
    if big:
        return f"classes.labels names class {big[0]}, outside the {classes['count']} classes", []
    if cfg["out_channels"] not in (cfg["in_channels"], 2 * cfg["in_channels"]) or cfg["in_channels"] != latent["channels"]:
        return (f"model.config in_channels {cfg['in_channels']} / out_channels {cfg['out_channels']} do not fit "
                f"latent.channels {latent['channels']} (out is in, or twice in with a learned variance)"), []
    if cfg["sample_size"] % cfg["patch_size"]:
        return f"model.config.sample_size {cfg['sample_size']} is not a multiple of patch_size {cfg['patch_size']}", []
    if _dims(m, 3, 1, 1, 2, ("B_model",)) != (6,) or _dims(m, 3, 1, 1, 1, ("B_model",)) != (3,):
        return f"dims {m['dims']} do not make the transformer's batch B_model = G * B", []
    size = cfg["sample_size"]
    return None, [
        ("graphs.full.inputs hidden_states", _static(graphs["full"][0]["hidden_states"]["shape"], 1), cfg["in_channels"]),
        ("graphs.full.inputs hidden_states height", _static(graphs["full"][0]["hidden_states"]["shape"], 2), size),
        ("graphs.full.inputs hidden_states width", _static(graphs["full"][0]["hidden_states"]["shape"], 3), size),
        ("graphs.full.outputs sample", _static(graphs["full"][1]["sample"]["shape"], 1), cfg["out_channels"]),
    ]


def _dims(m: dict, b: int, h: int, w: int, g: int, names: tuple[str, ...]) -> tuple | None:
    """The values `dims` gives these symbols for one request, or None where it does not define them."""
    try:
        values = dim_values(m, b, h, w, g)
    except UsageError:
        return None
    return tuple(values.get(n) for n in names)


def _inconsistency(m: dict) -> str | None:
    """The first disagreement between sections, or None."""
    cfg, cache, latent = m["model"]["config"], m["cache"], m["latent"]
    lite = cache["granularity"] == "lite"
    graphs = {name: ({t["name"]: t for t in g["inputs"]}, {t["name"]: t for t in g["outputs"]})
              for name, g in m["graphs"].items()}
    for name, g in m["graphs"].items():
        for kind in ("inputs", "outputs"):
            names = [t["name"] for t in g[kind]]
            if len(set(names)) != len(names):
                return f"graphs.{name}.{kind} names a tensor twice"
    expected = _interfaces(m)
    if set(m["graphs"]) != set(expected):
        return (f"graphs holds {sorted(m['graphs'])}, but a {m['model']['family']} directory holds "
                f"{sorted(expected)}")
    for name, (inputs, outputs) in expected.items():
        have_in, have_out = graphs[name]
        if set(have_in) != set(inputs) or set(have_out) != set(outputs):
            return (f"graphs.{name} takes {sorted(have_in)} and gives {sorted(have_out)}, but this model "
                    f"(family {m['model']['family']}, guidance {m['guidance']['kind']}, cache {cache['granularity']}, "
                    f"max_order {cache['max_order']}) needs {sorted(inputs)} and gives {sorted(outputs)}")
    known = {"B", "H", "W", "G", *m["dims"]}
    for name, g in m["graphs"].items():
        for t in [*g["inputs"], *g["outputs"]]:
            unknown = symbols(t["shape"]) - known
            if unknown:
                return (f"graphs.{name} {t['name']} has a size {sorted(unknown)[0]!r} that dims does not define "
                        "(nor is it B, H, W or G)")
    for name, entry in m.get("schedules", {}).items():
        if entry["file"] != f"schedules/{name}.json":
            return f"schedules.{name}.file is {entry['file']!r}, not schedules/{name}.json"
        if entry["full_steps"] > entry["steps"]:
            return f"schedules.{name} has {entry['full_steps']} full steps of {entry['steps']}"
    if cfg["dim"] % cfg["head_dim"]:
        return f"model.config.dim {cfg['dim']} is not a multiple of head_dim {cfg['head_dim']}"
    if m["defaults"]["schedule"]["order"] > cache["max_order"]:
        return f"defaults.schedule.order {m['defaults']['schedule']['order']} is above cache.max_order {cache['max_order']}"
    problem, declared = _family_inconsistency(m, graphs)
    if problem:
        return problem
    factors = [f"factor_{i}" for i in range(cache["max_order"] + 1)]
    declared.append(("graphs.forecast.inputs coefficients", _static(graphs["forecast"][0]["coefficients"]["shape"], 0),
                     cache["max_order"] + 1))
    declared.append(("graphs.vae_decoder.inputs latents", _static(graphs["vae_decoder"][0]["latents"]["shape"], 1),
                     latent["channels"]))
    if not lite:
        streams, dim = len(cache["streams"]), cache["feature_dim"]
        for t in [graphs["forecast"][0][f] for f in factors] + [graphs["full"][1]["features"]]:
            declared += [(f"{t['name']} streams", _static(t["shape"], 0), streams),
                         (f"{t['name']} width", _static(t["shape"], -1), dim)]
    else:  # the feature is the prediction itself: every factor has its shape, one stream
        sample = graphs["full"][1]["sample"]["shape"]
        for f in factors:
            if graphs["forecast"][0][f]["shape"] != [1, *sample]:
                return (f"graphs.forecast.inputs {f} has shape {graphs['forecast'][0][f]['shape']}, but a lite "
                        f"cache's factors are the prediction's shape {sample} with one stream in front")
    for where, size, implied in declared:
        if size is not None and size != implied:
            return f"{where} is declared with size {size}, but the manifest's other sections imply {implied}"
    for section in ("quantization",):
        unknown = set(m.get(section, {})) - set(m["graphs"])
        if unknown:
            return f"{section} names graphs the directory does not have: {sorted(unknown)}"
    unknown = set(m.get("tensorrt", {}).get("plans", {})) - set(m["graphs"])
    if unknown:
        return f"tensorrt.plans names graphs the directory does not have: {sorted(unknown)}"
    return None


def referenced_files(m: dict) -> dict[str, str]:
    """Every file the manifest makes a reader open, with the key that names it."""
    refs = {}
    for name, g in m["graphs"].items():
        for kind in ("onnx", "onnx_data", "torch"):
            if kind in g:
                refs[g[kind]] = f"graphs.{name}.{kind}"
    for name, t in m.get("text", {}).items():
        refs[t["tokenizer"]] = f"text.{name}.tokenizer"
    for name, p in m.get("tensorrt", {}).get("plans", {}).items():
        refs[p["plan"]] = f"tensorrt.plans.{name}.plan"
    for name, q in m.get("quantization", {}).items():
        if "calibration" in q:
            refs[q["calibration"]] = f"quantization.{name}.calibration"
    for name, s in m.get("schedules", {}).items():
        refs[s["file"]] = f"schedules.{name}.file"
    return refs
