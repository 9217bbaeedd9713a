"""Calibrated plans against TaylorSeer's fixed interval at the same number of full steps, on prompts
(or classes) and seeds never used in calibration; both in one run, side by side.

    .venv/bin/python scripts/bench_plans.py out/flux-tiny-modules out/flux-tiny-lite --budgets 6,7,8,10,14

For every engine directory (one per cache granularity of the same model): seer-calibrate's work for
every budget from one recording (plans named kBUDGET, replacing earlier ones of that name), its cost
(wall time, peak memory); then seer-eval's harness over --no-cache, TaylorSeer with the directory's
order and warm-up at the interval giving each budget, and the plans. Prints a markdown table and
writes the whole report as JSON beside --out.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    from seer.calib import calibrate as cal
    from seer.calib import plans
    from seer.evaluate import harness
    from seer.runtime.pipeline import Pipeline
    from seer.runtime.plan import Plan

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("engine_dirs", nargs="+")
    ap.add_argument("--budgets", default="6,7,8,10,14")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--calibration-size", type=int, default=8)
    ap.add_argument("--count", type=int, default=None, help="held-out prompts or classes [default: harness's 36]")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--judge", default="auto", choices=["auto", "real", "proxy"])
    ap.add_argument("--warmup", type=int, default=1, help="seer-calibrate --warmup")
    ap.add_argument("--max-evaluations", type=int, default=400)
    ap.add_argument("--latent", action="store_true",
                    help="also the held-out runs' final latents against --no-cache (latent SNR dB; images at 8 bits "
                         "stop telling schedules apart above about 50 dB PSNR); runs every row again")
    ap.add_argument("--out", default="out/bench_plans.json")
    args = ap.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    calibration = {}
    for d in args.engine_dirs:
        pipe = Pipeline.load(d)
        warmup = args.warmup
        conditions = cal.default_conditions(pipe, args.calibration_size)
        runs = cal.calibration_runs(pipe, conditions)
        pipe.warmup()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        made, recording, per_budget = {}, None, {}
        for k in budgets:
            result = cal.calibrate(pipe, k, args.steps, runs, warmup, args.judge, max_evaluations=args.max_evaluations,
                                   recording=recording)
            recording = result.recording
            prov = cal.provenance(pipe, result, f"k{k}", k, warmup, 1e-4, conditions)
            p = result.plan
            made[f"k{k}"] = Plan(p.full, p.order, p.coefficients, p.derive_from, f"k{k}", prov)
            per_budget[k] = {"seconds": round(result.seconds, 1), "judge": result.judge, "rows": result.table,
                             "evaluations": result.evaluations}
            print(f"{d}: budget {k} calibrated in {result.seconds:.1f} s ({result.judge}): "
                  f"{result.table[-1]['full_steps']} order {result.table[-1]['order']}", file=sys.stderr)
        cal.add_plans(d, made, cal.graph_hashes(pipe.manifest), replace=True)
        calibration[d] = {"seconds": round(time.perf_counter() - t0, 1), "recording_seconds": round(recording.seconds, 1),
                          "peak_rss_growth_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024),
                          "runs": len(runs), "recorded_elements": recording.elements,
                          "feature_elements": recording.feature_elements, "budgets": per_budget}

    pipe = Pipeline.load(args.engine_dirs[0])
    d = pipe.manifest["defaults"]["schedule"]
    specs = [harness.ScheduleSpec(no_cache=True)]
    rules = {}
    for k in budgets:
        rule = plans.taylorseer_for_budget(args.steps, k, d["warmup"])
        if rule is not None:
            interval = rule.full_steps[-1] - rule.full_steps[-2]
            rules[k] = harness.ScheduleSpec(False, interval, d["order"], d["warmup"])
            specs.append(rules[k])
        specs.append(harness.ScheduleSpec(plan=f"k{k}"))
    report = harness.evaluate(args.engine_dirs, specs, None, seeds, steps=args.steps, count=args.count,
                              judge=False, progress=lambda m: print(m, file=sys.stderr))
    rows = {(r["engine_dir"], r["schedule"]): r for r in report["rows"]}
    latent = {}
    if args.latent:
        items = harness.conditions_for(pipe, None, args.count)
        cases = [(k, s) for k in range(len(items.values)) for s in seeds]
        refs = [pipe(**items.kwargs(k), seed=s, steps=args.steps, no_cache=True, return_latents=True).latents
                for k, s in cases]
        for e in args.engine_dirs:
            p = Pipeline.load(e)
            for spec in specs[1:]:
                latent[(e, spec.label)] = sum(
                    plans.latent_snr_db(ref, p(**items.kwargs(k), seed=s, steps=args.steps, return_latents=True,
                                              **spec.kwargs()).latents) for ref, (k, s) in zip(refs, cases)) / len(cases)
    head = "| budget | cache | TaylorSeer | PSNR dB | SSIM | loop ms | calibrated full steps | PSNR dB | SSIM | loop ms | gain dB |"
    if args.latent:
        head += " latent SNR dB TaylorSeer / calibrated |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for k in budgets:
        for e in args.engine_dirs:
            plan_row = rows[(e, f"plan:k{k}")]
            rule_row = rows.get((e, rules[k].label)) if k in rules else None
            full = calibration[e]["budgets"][k]["rows"][-1]["full_steps"]
            cells = [str(k), plan_row["cache"]]
            if rule_row:
                cells += [rules[k].label, f"{rule_row['psnr_db']['mean']:.2f}", f"{rule_row['ssim']['mean']:.4f}",
                          f"{rule_row['seconds']['denoise_median'] * 1e3:.1f}"]
            else:
                cells += ["-", "-", "-", "-"]
            cells += [",".join(map(str, full)), f"{plan_row['psnr_db']['mean']:.2f}", f"{plan_row['ssim']['mean']:.4f}",
                      f"{plan_row['seconds']['denoise_median'] * 1e3:.1f}",
                      f"{plan_row['psnr_db']['mean'] - rule_row['psnr_db']['mean']:+.2f}" if rule_row else "-"]
            if args.latent:
                cells.append(f"{latent.get((e, rules[k].label), float('nan')):.2f} / {latent[(e, f'plan:k{k}')]:.2f}"
                             if k in rules else f"- / {latent[(e, f'plan:k{k}')]:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    none = rows[(args.engine_dirs[0], "none")]
    lines.append(f"\n--no-cache loop {none['seconds']['denoise_median'] * 1e3:.1f} ms; "
                 f"{report['images_per_row']} held-out images per row ({report['conditioning']}), {args.steps} steps")
    for e, c in calibration.items():
        lines.append(f"calibration of {e}: {c['runs']} runs recorded in {c['recording_seconds']} s, "
                     f"{len(budgets)} budgets in {c['seconds']} s, peak memory +{c['peak_rss_growth_mib']} MiB, "
                     f"{c['recorded_elements']} of {c['feature_elements']} feature values a step")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report.pop("_reference_images", None)
    report.pop("_conditions", None)
    out.write_text(json.dumps({"calibration": calibration, "report": report, "table": text}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
