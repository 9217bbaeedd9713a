"""One seer-bench row in a fresh process, for its peak memory: `python -m seer.evaluate.probe JOB`,
JOB a JSON object (see `bench.peak_memory`; `condition` is a prompt or a class id). Prints one JSON
line: the peak resident memory in MiB and, on a GPU, the device memory: torch's peak reservation for
the torch backend and diffusers, the memory in use after the image for ONNX Runtime and TensorRT
(their arenas keep their peak; torch does not see them)."""

from __future__ import annotations

import json
import sys

from .peak import peak_rss_mib


def main(argv: list[str]) -> None:
    job = json.loads(argv[1])
    from .harness import ScheduleSpec, condition_kwargs

    spec = ScheduleSpec.parse(job["schedule"])
    if job["kind"] == "seer":
        from ..runtime.pipeline import Pipeline

        pipe = Pipeline.load(job["engine_dir"], backend=job["backend"], device=job["device"],
                             cuda_graphs=job.get("cuda_graphs", False),
                             trust_torch_programs=job.get("trust_torch_programs", False))
        guidance = {} if job.get("guidance") is None else {"guidance_scale": job["guidance"]}
        pipe(**condition_kwargs(pipe.family.conditioning, job["condition"]), seed=job["seed"], steps=job["steps"],
             **guidance, **spec.kwargs())
    else:
        from .bench import Peers

        Peers(job["model"], job["steps"], spec, job["device"], job.get("dtype", "float32"), job.get("family", "flux"),
              job.get("guidance")).generate(job["row"], job["condition"], job["seed"])
    out = {"peak_rss_mib": peak_rss_mib()}
    if job["device"].startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        torch_peak, in_use = torch.cuda.max_memory_reserved() / 2**20, (total - free) / 2**20
        # torch sees all of the torch backend's and diffusers' memory, none of ONNX Runtime's or TensorRT's
        sees_all = job["kind"] == "diffusers" or job["backend"] == "torch"
        out.update(torch_peak_mib=torch_peak, gpu_in_use_mib=in_use, peak_gpu_mib=torch_peak if sees_all else in_use)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
