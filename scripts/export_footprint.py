#!/usr/bin/env python
"""What `seer-export` costs (peak memory, peak disk, time) at FLUX.1-dev's real width, extrapolated
to the real FLUX.1-dev transformer.

    .venv/bin/python scripts/export_footprint.py --work DIR [--depths 1x1,2x2] [--precisions bf16,fp32]
                                                 [--json out.json] [--keep]

For each depth DxS (D double + S single blocks) it builds once, cached under DIR/models, a diffusers
FLUX pipeline whose transformer is FLUX.1-dev's (width 3072 = 24 heads x 128, text widths 4096 and
768, guidance embedding) except for its depth, with random weights saved in bfloat16 as FLUX.1-dev
ships them; the other components are flux-tiny's, with tiny random text encoders of the widths the
transformer needs. Then, for each (depth, precision), it runs `seer-export` in a fresh process and
measures:

- peak RSS: the export process's own VmHWM (the kernel's high-water mark, read at its exit), plus
  the phase of the export during which the polled RSS peaked;
- peak disk: the bytes of every file under the output's parent folder, polled every 0.2 s (the
  hidden `.NAME.partial-*` folder the export writes into, and the export's temporary files: its
  TMPDIR points into that folder), minus what was there before;
- the final engine directory's bytes and its transformer graphs' bytes (full.onnx*, forecast.onnx*);
- wall time.

It fits, per precision, a least-squares line of each against the transformer's parameter count and
extrapolates to FLUX.1-dev's 11,901,408,320 parameters, against the product's targets for a one-GPU
box (128 GB RAM, 64 GB disk): peak RSS at most 1.5x the bf16 transformer weights (35.7 GB), peak
disk at most 1.1x the engine directory's final bytes.

The peaks are also recorded and fitted per phase of the export (the phase is the last `exporting X`
/ `tokenizers` / `manifest` line seer-export logged; a phase logged a second time is `X#2`: a
transformer over 1 GiB is first exported and checked as a one-block slice, then exported whole).
Some phases cost the same at every depth (the slice check) and some grow with it (the whole
export), so FLUX.1-dev's predicted peak is the largest phase's line at its size, not only the line
through the overall peaks. Each run's log and its 0.2 s samples (RSS, disk, phase) are kept under
DIR/logs; its row under DIR/results (--resume reuses them).

Builds and exports run in child processes, so none of this script's own memory is counted. Engine
directories are removed after each measurement unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

GB = 1e9
# FLUX.1-dev: black-forest-labs/FLUX.1-dev/transformer (19 double + 38 single blocks, 24 x 128).
FLUX_DEV_PARAMS = 11_901_408_320
FLUX_DEV_BF16_BYTES = 2 * FLUX_DEV_PARAMS
# Its text encoders, exported one at a time before the transformer (not part of the transformer's peak).
T5_XXL_PARAMS = 4.76e9
CLIP_L_PARAMS = 123e6
RSS_TARGET = 1.5  # x the bf16 transformer weights
DISK_TARGET = 1.1  # x the engine directory's final bytes
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
POLL_S = 0.2
METRICS = ("peak_rss_bytes", "peak_anon_bytes", "peak_disk_bytes", "dir_bytes", "seconds")
PHASE_METRICS = ("peak_rss_bytes", "peak_anon_bytes", "peak_disk_bytes")
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

# Runs in the export's own process: the seer-export command itself, then that process's VmHWM.
_WRAPPER = r"""
import os, sys
def _hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
code = 1
try:
    from seer.export.cli import main
    main(sys.argv[1:], prog_name="seer-export")
    code = 0
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
finally:
    with open(os.environ["SEER_FOOTPRINT_HWM"], "w") as f:
        f.write(str(_hwm()))
sys.exit(code)
"""


# ------------------------------------------------------------------------------------------ models


def parse_depths(text: str) -> list[tuple[int, int]]:
    depths = []
    for item in text.split(","):
        double, _, single = item.strip().lower().partition("x")
        if not double.isdigit() or not single.isdigit():
            raise argparse.ArgumentTypeError(f"depth {item!r} is not DxS (D double + S single blocks), e.g. 2x2")
        depths.append((int(double), int(single)))
    return depths


def parse_precisions(text: str) -> list[str]:
    out = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in out if p not in BYTES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown precision(s) {bad}; choose from {', '.join(BYTES)}")
    return out


def model_name(double: int, single: int, heads: int, head_dim: int) -> str:
    return f"flux-{heads}x{head_dim}-{double}x{single}"


def transformer_config(double: int, single: int, heads: int, head_dim: int) -> dict:
    """FLUX.1-dev's transformer config except its depth (and, for tests, its width)."""
    rope = (16, 56, 56) if head_dim == 128 else _rope_axes(head_dim)
    return dict(patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
                attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=rope)


def _rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Rotary axes summing to head_dim, in FLUX's proportions (16:56:56 of 128), each even."""
    first = max(2, 2 * round(head_dim * 16 / 128 / 2))
    rest = head_dim - first
    second = 2 * (rest // 4)
    return first, second, rest - second


def build_model(directory: Path, double: int, single: int, heads: int, head_dim: int, seed: int = 0) -> None:
    """The diffusers FLUX pipeline at `directory` (runs in the builder's own process)."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from seer.export.source import embedded_dir

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    pipe = FluxPipeline.from_pretrained(embedded_dir())
    clip_tok, t5_tok = pipe.tokenizer, pipe.tokenizer_2
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialised straight in bfloat16: half the builder's memory
    try:
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**transformer_config(double, single, heads, head_dim))
        torch.manual_seed(seed + 1)
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(t5_tok), d_model=4096, d_ff=64, d_kv=64, num_heads=2, num_layers=1,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
        torch.manual_seed(seed + 2)
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(clip_tok), hidden_size=768, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, projection_dim=768, max_position_embeddings=77,
            bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id))
    finally:
        torch.set_default_dtype(default)
    pipe.register_modules(transformer=transformer.to(torch.bfloat16), text_encoder=clip.to(torch.bfloat16),
                          text_encoder_2=t5.to(torch.bfloat16))
    pipe.vae.register_to_config(sample_size=1024)  # FLUX.1-dev's default image size
    pipe.save_pretrained(directory, safe_serialization=True)


def ensure_models(work: Path, depths: list[tuple[int, int]], heads: int, head_dim: int, log) -> dict:
    """The cached pipeline of each depth; missing ones are built in one child process (each into a
    temp sibling, then renamed, so an interrupted build leaves no half model behind)."""
    folder = work / "models"
    paths = {d: folder / model_name(*d, heads, head_dim) for d in depths}
    missing = [d for d, path in paths.items() if not (path / "model_index.json").is_file()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        log(f"building {', '.join(paths[d].name for d in missing)} ({heads} heads x {head_dim})")
        started = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "_build", str(folder), str(heads), str(head_dim),
               ",".join(f"{d}x{s}" for d, s in missing)]
        subprocess.run(cmd, check=True)
        log(f"built in {time.perf_counter() - started:.0f} s")
    return paths


def _build_all(folder: Path, heads: int, head_dim: int, depths: list[tuple[int, int]]) -> None:
    for double, single in depths:
        path = folder / model_name(double, single, heads, head_dim)
        tmp = path.with_name(f".{path.name}.building-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build_model(tmp, double, single, heads, head_dim)
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def safetensors_params(folder: Path) -> tuple[int, int]:
    """(parameters, stored bytes) of every floating tensor in the folder's safetensors files (headers only)."""
    params = nbytes = 0
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for key, t in header.items():
            if key == "__metadata__" or not str(t.get("dtype", "")).startswith(("F", "BF")):
                continue
            n = 1
            for d in t["shape"]:
                n *= int(d)
            params += n
            nbytes += n * _SAFETENSORS_BYTES.get(t["dtype"], 0)
    return params, nbytes


# ------------------------------------------------------------------------------------- measuring


def tree_bytes(root: Path) -> int:
    """Apparent bytes of every file under root (hidden ones included); tolerant of files vanishing."""
    total, stack = 0, [str(root)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                except (FileNotFoundError, PermissionError):
                    pass
    return total


def _proc_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) of a live process, in bytes; (0, 0) once it is gone. RssAnon leaves out the
    file pages a process maps (safetensors weights read through mmap): the kernel can drop those
    under pressure, anonymous memory it cannot (there is no swap on these machines)."""
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, anon


def _phase_of(line: str) -> str | None:
    line = line.strip()
    if line.startswith("exporting ") and " from " not in line:
        return line[len("exporting "):].split(" (")[0]
    if line in ("tokenizers", "manifest") or line.startswith(("calibrating", "quantizing")):
        return line
    return None


def measure_export(model: Path, parent: Path, precision: str, extra: list[str], log_file: Path,
                   timeout: float | None = None) -> dict:
    """One `seer-export` in a fresh process, with its peak RSS, peak disk and time."""
    if parent.exists():
        shutil.rmtree(parent)
    parent.mkdir(parents=True)
    out, tmpdir = parent / "engine", parent / ".tmp"
    tmpdir.mkdir()
    hwm_file = log_file.with_suffix(".hwm")
    hwm_file.unlink(missing_ok=True)
    baseline = tree_bytes(parent)
    args = [str(model), "--out", str(out), "--precision", precision, "--no-torch-programs", "--overwrite", *extra]
    env = {**os.environ, "TMPDIR": str(tmpdir), "SEER_FOOTPRINT_HWM": str(hwm_file), "PYTHONUNBUFFERED": "1"}
    lines: list[tuple[float, str]] = []
    state, seen = {"phase": "startup"}, {}

    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True, errors="replace")

    def reader():
        with open(log_file, "w") as logf:
            for raw in proc.stdout:
                for line in raw.replace("\r", "\n").splitlines():
                    t = time.perf_counter() - started
                    lines.append((t, line))
                    logf.write(f"{t:8.1f} {line}\n")
                    logf.flush()
                    phase = _phase_of(line)
                    if phase:  # a phase seen again (a slice checked first, then the whole) gets "#2"
                        seen[phase] = seen.get(phase, 0) + 1
                        state["phase"] = phase if seen[phase] == 1 else f"{phase}#{seen[phase]}"

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    peak_rss = peak_anon = peak_disk = peak_tmp = 0
    rss_phase = disk_phase = "startup"
    phases: dict[str, dict] = {}
    timed_out = False
    with open(log_file.with_suffix(".samples.tsv"), "w") as samples:
        samples.write("seconds\trss_bytes\tanon_bytes\tdisk_bytes\ttmp_bytes\tphase\n")
        while True:
            rc = proc.poll()
            now = time.perf_counter() - started
            rss, anon = _proc_memory(proc.pid) if rc is None else (0, 0)
            disk = tree_bytes(parent) - baseline
            tmp_bytes = tree_bytes(tmpdir)
            phase = state["phase"]
            samples.write(f"{now:.2f}\t{rss}\t{anon}\t{disk}\t{tmp_bytes}\t{phase}\n")
            if rss > peak_rss:
                peak_rss, rss_phase = rss, phase
            if disk > peak_disk:
                peak_disk, disk_phase = disk, phase
            peak_tmp, peak_anon = max(peak_tmp, tmp_bytes), max(peak_anon, anon)
            stats = phases.setdefault(phase, {"start_s": now, "end_s": now, "peak_rss_bytes": 0,
                                              "peak_anon_bytes": 0, "peak_disk_bytes": 0})
            stats["end_s"] = now
            stats["peak_rss_bytes"] = max(stats["peak_rss_bytes"], rss)
            stats["peak_anon_bytes"] = max(stats["peak_anon_bytes"], anon)
            stats["peak_disk_bytes"] = max(stats["peak_disk_bytes"], disk)
            if rc is not None:
                break
            if timeout and now > timeout and not timed_out:
                proc.kill()
                timed_out = True
            time.sleep(POLL_S)
    seconds = time.perf_counter() - started
    thread.join(timeout=10)

    hwm = int(hwm_file.read_text() or 0) if hwm_file.is_file() else 0
    row = {
        "returncode": rc,
        "seconds": seconds,
        "peak_rss_bytes": max(hwm, peak_rss),
        "peak_rss_hwm_bytes": hwm,
        "peak_rss_polled_bytes": peak_rss,
        "peak_rss_phase": rss_phase,
        "peak_anon_bytes": peak_anon,
        "peak_disk_bytes": peak_disk,
        "peak_disk_phase": disk_phase,
        "peak_tmp_bytes": peak_tmp,
        "phases": phases,
        "command": ["seer-export", *args],
        "log": str(log_file),
    }
    exported = [float(line.split()[2]) for _, line in lines if line.startswith("exported in ")]
    if exported:
        row["export_reported_seconds"] = exported[-1]
    if rc != 0 or not (out / "manifest.json").is_file():
        tail = [line for _, line in lines if line.strip()][-25:]
        row["error"] = "timed out" if timed_out else "\n".join(tail) or f"exit status {rc}"
        return row
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    row["dir_bytes"] = sum(files.values())
    row["graph_bytes"] = sum(n for f, n in files.items() if f.startswith(("full.onnx", "forecast.onnx")))
    row["files"] = files
    return row


# ------------------------------------------------------------------------------------------ fits


def _line(xs, ys) -> dict:
    import numpy as np

    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    slope, intercept = np.polyfit(xs, ys, 1)
    return {"slope_per_param": float(slope), "intercept": float(intercept),
            "flux_dev": float(slope * FLUX_DEV_PARAMS + intercept),
            "max_residual": float(np.max(np.abs(ys - (slope * xs + intercept))))}


def _at(line: dict, params: float) -> float:
    return line["slope_per_param"] * params + line["intercept"]


def fit_lines(rows: list[dict], precision: str) -> dict:
    """Least-squares line of each metric against the transformer's parameters, and its value at FLUX.1-dev.

    The peaks are also fitted phase by phase: a peak is the largest of several phases' peaks, some of
    which do not grow with depth (the check of a one-block slice) and some of which do (the whole
    transformer's export), so a line through the overall peaks can flatten out at small depths and
    miss where the peak goes at 57 blocks. FLUX.1-dev's predicted peak is the largest phase's line
    there (and never below the overall line)."""
    ok = [r for r in rows if r["precision"] == precision and "error" not in r]
    xs = [r["params"] for r in ok]
    fit: dict = {"points": len(ok)}
    if len(set(xs)) < 2:
        fit["note"] = "needs two or more depths that exported"
        return fit
    for metric in METRICS:
        fit[metric] = _line(xs, [r[metric] for r in ok])
    common = [ph for ph in ok[0].get("phases", {}) if all(ph in r.get("phases", {}) for r in ok)]
    fit["phases"] = {ph: {m: _line(xs, [r["phases"][ph][m] for r in ok]) for m in PHASE_METRICS} for ph in common}

    def worst(metric: str, params: float) -> tuple[float, str]:
        best = (_at(fit[metric], params), "overall line")
        for ph, lines in fit["phases"].items():
            best = max(best, (_at(lines[metric], params), ph))
        return best

    rss, rss_phase = worst("peak_rss_bytes", FLUX_DEV_PARAMS)
    anon, anon_phase = worst("peak_anon_bytes", FLUX_DEV_PARAMS)
    disk, disk_phase = worst("peak_disk_bytes", FLUX_DEV_PARAMS)
    dir_ = fit["dir_bytes"]["flux_dev"]
    te_bytes = T5_XXL_PARAMS * (4 if precision == "fp16" else BYTES[precision]) + CLIP_L_PARAMS * BYTES[precision]
    fit["flux_dev"] = {
        "params": FLUX_DEV_PARAMS,
        "bf16_weights_bytes": FLUX_DEV_BF16_BYTES,
        "peak_rss_bytes": rss,
        "peak_rss_phase": rss_phase,
        "peak_rss_bytes_overall_line": fit["peak_rss_bytes"]["flux_dev"],
        "rss_over_bf16_weights": rss / FLUX_DEV_BF16_BYTES,
        "rss_target_bytes": RSS_TARGET * FLUX_DEV_BF16_BYTES,
        "rss_meets_target": bool(rss <= RSS_TARGET * FLUX_DEV_BF16_BYTES),
        "peak_anon_bytes": anon,
        "peak_anon_phase": anon_phase,
        "anon_over_bf16_weights": anon / FLUX_DEV_BF16_BYTES,
        "anon_meets_target": bool(anon <= RSS_TARGET * FLUX_DEV_BF16_BYTES),
        "peak_disk_bytes": disk,
        "peak_disk_phase": disk_phase,
        "peak_disk_bytes_overall_line": fit["peak_disk_bytes"]["flux_dev"],
        "dir_bytes": dir_,
        "disk_over_dir": disk / dir_,
        "disk_meets_target": bool(disk <= DISK_TARGET * dir_),
        "seconds": fit["seconds"]["flux_dev"],
        # the real text encoders: their graphs are written before the transformer's and stay on disk
        "text_encoder_bytes": te_bytes,
        "dir_bytes_with_text_encoders": dir_ + te_bytes,
        "peak_disk_bytes_with_text_encoders": disk + te_bytes,
        "disk_over_dir_with_text_encoders": (disk + te_bytes) / (dir_ + te_bytes),
        # their own, earlier, peak: at most what a transformer of T5-XXL's size would cost
        "t5_xxl_peak_rss_bytes_at_most": worst("peak_rss_bytes", T5_XXL_PARAMS)[0],
    }
    return fit


# ----------------------------------------------------------------------------------------- report


def _gb(x) -> str:
    return "-" if x is None else f"{x / GB:.2f}"


def render(result: dict) -> str:
    out = ["| depth | params | precision | peak RSS GB | RSS / bf16 weights | peak anon GB | peak disk GB "
           "| final dir GB | peak disk / final dir | time s | graphs GB | RSS peak in | disk peak in |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            first = r["error"].strip().splitlines()[-1] if r["error"].strip() else "failed"
            out.append(f"| {r['depth']} | {r['params']:,} | {r['precision']} | {_gb(r['peak_rss_bytes'])} | "
                       f"{r['peak_rss_bytes'] / r['bf16_bytes']:.2f} | {_gb(r['peak_anon_bytes'])} | "
                       f"{_gb(r['peak_disk_bytes'])} | FAILED | - | "
                       f"{r['seconds']:.0f} | - | {r['peak_rss_phase']} | `{first[:80]}` |")
            continue
        out.append(f"| {r['depth']} | {r['params']:,} | {r['precision']} | {_gb(r['peak_rss_bytes'])} | "
                   f"{r['peak_rss_bytes'] / r['bf16_bytes']:.2f} | {_gb(r['peak_anon_bytes'])} | "
                   f"{_gb(r['peak_disk_bytes'])} | {_gb(r['dir_bytes'])} | {r['peak_disk_bytes'] / r['dir_bytes']:.2f} | {r['seconds']:.0f} | "
                   f"{_gb(r['graph_bytes'])} | {r['peak_rss_phase']} | {r['peak_disk_phase']} |")
    out.append("")
    out.append(f"Fits against transformer parameters (y = slope x params + intercept), extrapolated to FLUX.1-dev "
               f"({FLUX_DEV_PARAMS:,} params, bf16 weights {FLUX_DEV_BF16_BYTES / GB:.1f} GB; targets: peak RSS <= "
               f"{RSS_TARGET} x {FLUX_DEV_BF16_BYTES / GB:.1f} = {RSS_TARGET * FLUX_DEV_BF16_BYTES / GB:.1f} GB, "
               f"peak disk <= {DISK_TARGET} x final dir):")
    out.append("")
    out.append("| precision | metric | slope (bytes or s / param) | intercept | FLUX.1-dev | max residual |")
    out.append("|---|---|---:|---:|---:|---:|")
    for precision, fit in result["fits"].items():
        if "note" in fit:
            out.append(f"| {precision} | - | {fit['note']} | | | |")
            continue
        for metric in METRICS:
            f = fit[metric]
            if metric == "seconds":
                out.append(f"| {precision} | time | {f['slope_per_param'] * 1e9:.2f} s / 1e9 | {f['intercept']:.0f} s | "
                           f"{f['flux_dev']:.0f} s | {f['max_residual']:.0f} s |")
            else:
                out.append(f"| {precision} | {metric.replace('_bytes', '').replace('_', ' ')} | "
                           f"{f['slope_per_param']:.3f} | {_gb(f['intercept'])} GB | {_gb(f['flux_dev'])} GB | "
                           f"{_gb(f['max_residual'])} GB |")
    out.append("")
    out.append("Peaks phase by phase (polled every 0.2 s; anon: RssAnon, the RSS less mapped file pages; `X#2`: the "
               "phase's second pass, i.e. the whole model after its one-block slice was checked), extrapolated to "
               "FLUX.1-dev:")
    out.append("")
    out.append("| precision | phase | RSS slope | RSS intercept | RSS at FLUX.1-dev | anon slope | anon intercept "
               "| anon at FLUX.1-dev | disk slope | disk intercept | disk at FLUX.1-dev |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for precision, fit in result["fits"].items():
        for ph, lines in fit.get("phases", {}).items():
            cells = []
            for m in PHASE_METRICS:
                f = lines[m]
                cells.append(f"{f['slope_per_param']:.3f} | {_gb(f['intercept'])} GB | {_gb(f['flux_dev'])} GB")
            out.append(f"| {precision} | {ph} | {' | '.join(cells)} |")
    out.append("")
    for precision, fit in result["fits"].items():
        if "note" in fit:
            continue
        d = fit["flux_dev"]
        out.append(
            f"- {precision}: FLUX.1-dev peak RSS {_gb(d['peak_rss_bytes'])} GB ({d['peak_rss_phase']}; the overall line "
            f"says {_gb(d['peak_rss_bytes_overall_line'])} GB) = {d['rss_over_bf16_weights']:.2f} x bf16 weights "
            f"(target <= {RSS_TARGET} x = {_gb(d['rss_target_bytes'])} GB: "
            f"{'meets' if d['rss_meets_target'] else 'MISSES'}); of which anonymous (not file pages) "
            f"{_gb(d['peak_anon_bytes'])} GB ({d['peak_anon_phase']}) = {d['anon_over_bf16_weights']:.2f} x; peak disk {_gb(d['peak_disk_bytes'])} GB "
            f"({d['peak_disk_phase']}) vs final dir {_gb(d['dir_bytes'])} GB = {d['disk_over_dir']:.2f} x "
            f"(target <= {DISK_TARGET} x: {'meets' if d['disk_meets_target'] else 'MISSES'}); export time "
            f"~{d['seconds'] / 60:.0f} min on this machine ({result['config']['cpus']} CPUs).")
        out.append(
            f"  The real text encoders (T5-XXL encoder {T5_XXL_PARAMS / 1e9:.2f}B, CLIP-L {CLIP_L_PARAMS / 1e6:.0f}M "
            f"params) are exported before the transformer, one at a time, so they do not add to its peak RSS "
            f"(T5-XXL's own peak: at most ~{_gb(d['t5_xxl_peak_rss_bytes_at_most'])} GB, a transformer of its size); "
            f"their graphs add ~{_gb(d['text_encoder_bytes'])} GB to both the directory and the peak disk: "
            f"dir ~{_gb(d['dir_bytes_with_text_encoders'])} GB, peak disk ~{_gb(d['peak_disk_bytes_with_text_encoders'])} "
            f"GB ({d['disk_over_dir_with_text_encoders']:.2f} x).")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="export_footprint.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, type=Path, help="folder for the cached models, runs and logs")
    p.add_argument("--depths", default="1x1,2x2", type=parse_depths,
                   help="DxS list: D double + S single blocks [default: 1x1,2x2]")
    p.add_argument("--precisions", default="bf16,fp32", type=parse_precisions,
                   help="seer-export --precision values [default: bf16,fp32]")
    p.add_argument("--width-heads", type=int, default=24, help="attention heads [default: 24, FLUX.1-dev's]")
    p.add_argument("--head-dim", type=int, default=128, help="attention head width [default: 128, FLUX.1-dev's]")
    p.add_argument("--max-sequence-length", type=int, default=512,
                   help="T5 tokens of the exported graphs [default: 512, FLUX.1-dev's]")
    p.add_argument("--cache", choices=["modules", "lite"], default="modules",
                   help="seer-export --cache [default: modules, seer-export's default]")
    p.add_argument("--also", default=None,
                   help="extra DxS:precision pairs outside the depths x precisions grid (e.g. 3x3:bf16)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the rows already measured under --work/results (same model and precision)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per export before it is killed")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and fits here")
    p.add_argument("--keep", action="store_true", help="keep the engine directories (they are GBs)")
    return p.parse_args(argv)


def run(args: argparse.Namespace, log=print) -> dict:
    work = args.work.absolute()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    pairs = [(d, p) for d in args.depths for p in args.precisions]
    for item in (args.also or "").split(","):
        if item.strip():
            depth, _, precision = item.strip().partition(":")
            pair = (parse_depths(depth)[0], *parse_precisions(precision))
            if pair not in pairs:
                pairs.append(pair)
    models = ensure_models(work, list(dict.fromkeys(d for d, _ in pairs)), args.width_heads, args.head_dim, log)
    extra = ["--max-sequence-length", str(args.max_sequence_length), "--cache", args.cache]
    rows = []
    for (double, single), precision in pairs:
        model = models[(double, single)]
        params, stored = safetensors_params(model / "transformer")
        tag = f"{double}x{single}-{precision}"
        saved = work / "results" / f"{model.name}-{precision}-{args.cache}-{args.max_sequence_length}.json"
        if args.resume and saved.is_file():
            row = json.loads(saved.read_text())
            if "error" not in row and row.get("params") == params:
                log(f"reusing {saved}")
                rows.append(row)
                continue
        log(f"exporting {model.name} in {precision} ...")
        row = {"depth": f"{double}x{single}", "double": double, "single": single, "precision": precision,
               "params": params, "bf16_bytes": 2 * params, "stored_bytes": stored, "model": str(model)}
        parent = work / "runs" / model_name(double, single, args.width_heads, args.head_dim) / precision
        row.update(measure_export(model, parent, precision, extra, work / "logs" / f"{model.name}-{precision}.log",
                                  args.timeout))
        if not args.keep:
            shutil.rmtree(parent, ignore_errors=True)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(row, indent=2) + "\n")
        if "error" in row:
            log(f"  {tag} FAILED (exit {row['returncode']}) after {row['seconds']:.0f} s:\n{row['error']}")
        else:
            log(f"  {tag}: peak RSS {_gb(row['peak_rss_bytes'])} GB ({row['peak_rss_phase']}), peak disk "
                f"{_gb(row['peak_disk_bytes'])} GB, dir {_gb(row['dir_bytes'])} GB, {row['seconds']:.0f} s")
        rows.append(row)
    result = {
        "config": {"work": str(work), "depths": [f"{d}x{s}" for d, s in args.depths], "precisions": args.precisions,
                   "width_heads": args.width_heads, "head_dim": args.head_dim,
                   "width": args.width_heads * args.head_dim, "max_sequence_length": args.max_sequence_length,
                   "cache": args.cache, "cpus": os.cpu_count(), "poll_s": POLL_S},
        "targets": {"rss_over_bf16_weights": RSS_TARGET, "rss_bytes": RSS_TARGET * FLUX_DEV_BF16_BYTES,
                    "disk_over_dir": DISK_TARGET},
        "flux_dev": {"params": FLUX_DEV_PARAMS, "bf16_bytes": FLUX_DEV_BF16_BYTES, "double": 19, "single": 38,
                     "t5_xxl_params": T5_XXL_PARAMS, "clip_l_params": CLIP_L_PARAMS},
        "rows": rows,
        "fits": {p: fit_lines(rows, p) for p in dict.fromkeys(p for _, p in pairs)},
    }
    result["table"] = render(result)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_build"]:  # the builder's own process (see ensure_models)
        _, folder, heads, head_dim, depths = argv
        _build_all(Path(folder), int(heads), int(head_dim), parse_depths(depths))
        return 0
    args = parse_args(argv)
    result = run(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(result["table"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any("error" in r for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
