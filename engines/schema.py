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

from ..errors import EngineDirError

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
    errors = sorted(_validator().iter_errors(manifest), key=lambda e: (list(map(str, e.absolute_path)), e.message))
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


def _inconsistency(m: dict) -> str | None:
    """The first disagreement between sections, or None."""
    cfg, cache, text, latent = m["model"]["config"], m["cache"], m["text"], m["latent"]
    lite = cache["granularity"] == "lite"
    graphs = {name: ({t["name"]: t for t in g["inputs"]}, {t["name"]: t for t in g["outputs"]})
              for name, g in m["graphs"].items()}
    for name, g in m["graphs"].items():
        for kind in ("inputs", "outputs"):
            names = [t["name"] for t in g[kind]]
            if len(set(names)) != len(names):
                return f"graphs.{name}.{kind} names a tensor twice"
    guidance = ["guidance"] if cfg["guidance"] else []
    step = ["hidden_states", "pooled_projections", "timestep", *guidance]
    factors = [f"factor_{i}" for i in range(cache["max_order"] + 1)]
    expected = {
        "clip": (["input_ids"], ["pooled_projections"]),
        "t5": (["input_ids"], ["encoder_hidden_states"]),
        "full": ([*step, "encoder_hidden_states", "rope_cos", "rope_sin"], ["sample"] + ([] if lite else ["features"])),
        "forecast": (([] if lite else step) + ["coefficients", *factors], ["sample"]),
        "vae_decoder": (["latents"], ["image"]),
    }
    for name, (inputs, outputs) in expected.items():
        have_in, have_out = graphs[name]
        if set(have_in) != set(inputs) or set(have_out) != set(outputs):
            return (f"graphs.{name} takes {sorted(have_in)} and gives {sorted(have_out)}, but this model "
                    f"(guidance {cfg['guidance']}, cache {cache['granularity']}, max_order {cache['max_order']}) "
                    f"needs {sorted(inputs)} and gives {sorted(outputs)}")
    if cfg["dim"] % cfg["head_dim"]:
        return f"model.config.dim {cfg['dim']} is not a multiple of head_dim {cfg['head_dim']}"
    if sum(cfg["axes_dims_rope"]) != cfg["head_dim"]:
        return f"model.config.axes_dims_rope {cfg['axes_dims_rope']} does not add up to head_dim {cfg['head_dim']}"
    if latent["packed_channels"] != 4 * latent["channels"] or cfg["in_channels"] != latent["packed_channels"]:
        return (f"latent.packed_channels {latent['packed_channels']} must be 4 x latent.channels "
                f"({latent['channels']}) and equal model.config.in_channels ({cfg['in_channels']})")
    if m["defaults"]["schedule"]["order"] > cache["max_order"]:
        return f"defaults.schedule.order {m['defaults']['schedule']['order']} is above cache.max_order {cache['max_order']}"
    s = m["sampler"]
    if s.get("use_dynamic_shifting", True) and s.get("max_image_seq_len", 4096) == s.get("base_image_seq_len", 256):
        return "sampler.max_image_seq_len equals base_image_seq_len: the dynamic shift is undefined"
    streams, dim = (1, cfg["out_channels"]) if lite else (len(cache["streams"]), cache["feature_dim"])
    declared = [  # (where, declared size, the size the other sections imply)
        ("graphs.clip.inputs input_ids", _static(graphs["clip"][0]["input_ids"]["shape"], 1), text["clip"]["max_length"]),
        ("graphs.t5.inputs input_ids", _static(graphs["t5"][0]["input_ids"]["shape"], 1), text["t5"]["max_length"]),
        ("graphs.full.inputs hidden_states", _static(graphs["full"][0]["hidden_states"]["shape"], -1),
         latent["packed_channels"]),
        ("graphs.full.inputs rope_cos", _static(graphs["full"][0]["rope_cos"]["shape"], -1), cfg["head_dim"]),
        ("graphs.full.outputs sample", _static(graphs["full"][1]["sample"]["shape"], -1), cfg["out_channels"]),
        ("graphs.forecast.inputs coefficients", _static(graphs["forecast"][0]["coefficients"]["shape"], 0),
         cache["max_order"] + 1),
        ("graphs.vae_decoder.inputs latents", _static(graphs["vae_decoder"][0]["latents"]["shape"], 1),
         latent["channels"]),
    ]
    feature_tensors = [graphs["forecast"][0][f] for f in factors] + ([] if lite else [graphs["full"][1]["features"]])
    for t in feature_tensors:
        declared += [(f"{t['name']} streams", _static(t["shape"], 0), streams),
                     (f"{t['name']} width", _static(t["shape"], -1), dim)]
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
    for name, t in m["text"].items():
        refs[t["tokenizer"]] = f"text.{name}.tokenizer"
    for name, p in m.get("tensorrt", {}).get("plans", {}).items():
        refs[p["plan"]] = f"tensorrt.plans.{name}.plan"
    for name, q in m.get("quantization", {}).items():
        if "calibration" in q:
            refs[q["calibration"]] = f"quantization.{name}.calibration"
    return refs
