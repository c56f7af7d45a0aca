"""What pinning PyTorch's CPU numerics (``av_grounding.numerics``) costs: the `train` and `infer`
stages on the CPU with the pin, against the same stages on this machine's own kernels.

    python benchmarks/cpu_numerics/cpu_numerics.py [--dataset data/dataset] [--steps 40] [--repeats 3]

Each run is a fresh process of the stage script (tiny model, ``--steps`` optimizer steps; then
`infer` of the final model on the evaluation split), so ATen, MKL and oneDNN choose their kernels
as a user's run does. Modes (``MODES``): "pinned" as the stages run; "native" with the two
pinning functions replaced by no-ops (AVX-512 kernels where the CPU has them, MKL's own
dispatch, oneDNN on, the machine's thread count); and three that undo one part of the pin each,
to show what each part costs. Runs go round the modes; CPU time (user + system, of the process
and its children) and wall time per run, with the sha256 of the trained weights (the same on
every pinned run of every machine). Writes benchmarks/cpu_numerics/results/cpu_numerics.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import REPO, command_line, machine, markdown_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {"pinned": "as the stages run", "native": "no pin: this machine's own kernels and threads",
         "mkl-auto": "pinned but MKL's own dispatch", "aten-native": "pinned but ATen's kernels for this CPU",
         "onednn": "pinned but oneDNN on"}
# A stage run in a child process, its pin changed as the mode says.
CHILD = """
import sys
import torch
from av_grounding import numerics
mode = sys.argv[1]
if mode == "native":
    numerics.pin_environment = numerics.pin_torch = lambda: None
elif mode == "mkl-auto":
    del numerics.PINNED_ENVIRONMENT["MKL_CBWR"]
elif mode == "aten-native":
    del numerics.PINNED_ENVIRONMENT["ATEN_CPU_CAPABILITY"]
    numerics.ATEN_CAPABILITY = torch.backends.cpu.get_cpu_capability()
elif mode == "onednn":
    pin = numerics.pin_torch
    def pin_torch():
        pin()
        torch.backends.mkldnn.enabled = True
    numerics.pin_torch = pin_torch
from av_grounding.cli import main
sys.exit(main(sys.argv[2:]))
"""


def timed(mode: str, argv: list[str]) -> dict:
    """Run one stage in a child process; its wall and CPU seconds."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", CHILD, mode, *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{mode} {' '.join(argv)} failed: {process.stderr.read()[-2000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def one_round(mode: str, model: str, dataset: Path, steps: int, work: Path) -> dict:
    out = work / mode
    train = timed(mode, ["train", "--dataset", str(dataset), "--output", str(out / "train"), "--metrics",
                         str(out / "train.json"), "--live", str(out / "live"), "--timing", str(out / "timing.json"),
                         "--model", model, "--max-steps", str(steps), "--save-every", "0"])
    infer = timed(mode, ["infer", "--dataset", str(dataset), "--train", str(out / "train"), "--output",
                         str(out / "predictions"), "--metrics", str(out / "infer.json"), "--timing",
                         str(out / "infer-timing.json"), "--zero-shot", "false", "--checkpoints", "none"])
    return {"mode": mode, "train": train, "infer": infer, "weights_sha256": weights_digest(out / "train" / "model"),
            "answers_sha256": answers_digest(out / "predictions" / "final")}


def weights_digest(model: Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: equal weights give
    equal digests whatever the file's header (library versions)."""
    from safetensors.numpy import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(model / "model.safetensors")).items()):
        digest.update(f"{name}:{tensor.dtype}:{tensor.shape}".encode())
        digest.update(tensor.tobytes())
    return digest.hexdigest()


def answers_digest(folder: Path) -> str:
    """sha256 over the answers (raw text) of every frame, in frame order."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.json")):
        digest.update(f"{path.stem}\0{json.loads(path.read_text())['raw_text']}\0".encode())
    return digest.hexdigest()


def summary(runs: list[dict]) -> dict:
    """Per mode: median seconds of each stage, its ratio to native, and the distinct weight files."""
    table = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        if mine:
            table[mode] = {f"{stage}_{kind}": round(statistics.median(r[stage][kind] for r in mine), 2)
                           for stage in ("train", "infer") for kind in ("cpu_s", "wall_s")}
            table[mode]["distinct_weights"] = len({r["weights_sha256"] for r in mine})
            table[mode]["weights_sha256"] = sorted({r["weights_sha256"] for r in mine})
            table[mode]["answers_sha256"] = sorted({r["answers_sha256"] for r in mine})
    for mode in table:
        table[mode]["over_native"] = {key: round(value / table["native"][key], 2)
                                      for key, value in table[mode].items() if key.endswith("_s")}
    return table


def markdown(report: dict) -> str:
    s, m = report["summary"], report["machine"]
    rows = [[f"{mode} ({MODES[mode]})", f"{s[mode]['train_cpu_s']} ({s[mode]['over_native']['train_cpu_s']:.2f}x)",
             s[mode]["train_wall_s"], f"{s[mode]['infer_cpu_s']} ({s[mode]['over_native']['infer_cpu_s']:.2f}x)",
             s[mode]["infer_wall_s"], s[mode]["distinct_weights"]] for mode in s]
    return "\n".join([
        "# The cost of the same CPU results on every machine", "",
        (f"Machine: {m['cpu']}, {m['cores']} cores, native ATen kernels {report['native_kernels']}; torch "
         f"{report['torch']}. Command: `{report['command']}`."), "",
        (f"Tiny model (`{report['model']}`), {report['steps']} training steps, then `infer` of the final model on "
         f"the evaluation split; medians of {report['repeats']} runs per mode, the modes taking turns; every run a "
         "fresh process, model building and loading included. CPU seconds are user + system of all threads."), "",
        *markdown_table(["mode", "train CPU s", "train wall s", "infer CPU s", "infer wall s", "distinct weights"],
                        rows), "",
        "Every mode is deterministic on one machine; only the pinned weights are the same on every machine.", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=REPO / "data" / "dataset")
    parser.add_argument("--model", default="tiny-qwen2_5_vl", help="built-in model (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: %(default)s")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    parser.add_argument("--name", default="cpu_numerics",
                        help="results file name, without suffix (default: %(default)s)")
    args = parser.parse_args()
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)}; known: {', '.join(MODES)}")
    import torch

    runs = []
    with tempfile.TemporaryDirectory(prefix="cpu-numerics-") as tmp:
        for repeat in range(args.repeats):
            for mode in args.modes.split(","):
                runs.append(one_round(mode, args.model, args.dataset.resolve(), args.steps, Path(tmp) / str(repeat)))
                print(json.dumps(runs[-1]), flush=True)
    report = {"machine": machine(), "torch": torch.__version__,
              "native_kernels": torch.backends.cpu.get_cpu_capability(),
              "model": args.model, "steps": args.steps, "repeats": args.repeats,
              "command": command_line(__file__),
              "runs": runs, "summary": summary(runs)}
    write_json(args.out / f"{args.name}.json", report)
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
