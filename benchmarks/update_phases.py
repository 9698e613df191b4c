"""Where one fairseq-train update spends its time, per rank: the recipe's own training command on 1, 2, 4 ... GPUs,
with timers around the phases of fairseq's Trainer.train_step.

For each --config and GPU count the recipe prints its fairseq-train command (DRY_RUN=1, NGPU=k: the per-GPU batch
and update-freq it would use), and this script runs that command in place of ``python3 -m fairseq_cli.train``
with the timers installed, launched as the recipe launches it (fairseq's own spawn of one process per GPU; each
spawned worker re-imports this file, which installs the timers in it too). Per update after --warmup it records,
in milliseconds of wall time on each rank:

  update          from one Trainer.train_step to the next (all of the below)
  outside         between train_steps: the data iterator, fairseq's progress logging, epoch ends
  forward         FairseqTask.train_step minus its backward, summed over the update's micro-batches
  backward        optimizer.backward (loss scaling included), summed; with DDP the last one starts the all-reduce
  stats sync      Trainer._aggregate_logging_outputs (an all-reduce of the logging outputs, multi-GPU only)
  multiply grads  optimizer.multiply_grads (fp16: copies the fp16 gradients into the fp32 master copy)
  clip            Trainer.clip_grad_norm (the gradient norm; fp16: the overflow check, a host sync)
  norm check      Trainer._check_grad_norms (all ranks' norms compared, multi-GPU only)
  optimizer       FairseqTask.optimizer_step (Adam on the fp32 copy, then the fp16 parameters)
  logging         Trainer._reduce_and_log_stats
  other           the rest of train_step

Without --sync the times are the host's (a phase that waits for the GPU, e.g. clip's overflow check, absorbs the
device time queued before it); with --sync a torch.cuda.synchronize() closes every phase, so each includes its own
device work (and the overlap of backward with the all-reduce is lost). Compare the two: host-bound phases keep
their time, device-bound ones move.

    python benchmarks/update_phases.py --data work/multi30k_en_de/bin --gpu-counts 1,2,4 --updates 150 \\
        --warmup 50 --config "transformer:HEADS=transformer" --config "collab_dk128:HEADS=collab KEY_DIM=128" \\
        --out results/multi_gpu/update_phases.json [--sync]
"""

import argparse
import atexit
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict

from multi_gpu import parse_configs, write_json  # this directory: run as a script, or re-imported by a worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_ENV, SYNC_ENV, WARMUP_ENV = "UPDATE_PHASES_DIR", "UPDATE_PHASES_SYNC", "UPDATE_PHASES_WARMUP"
PHASES = ["update", "outside", "forward", "backward", "stats sync", "multiply grads", "clip", "norm check",
          "optimizer", "logging", "other"]  # fmt: skip
# (module, class) -> {method: phase}; forward is task.train_step's time minus the backward inside it
OPTIMIZER_PHASES = {"backward": "backward", "multiply_grads": "multiply grads"}
TIMED = {
    ("fairseq.tasks.fairseq_task", "FairseqTask"): {"train_step": "forward", "optimizer_step": "optimizer"},
    ("fairseq.optim.fairseq_optimizer", "FairseqOptimizer"): OPTIMIZER_PHASES,
    ("fairseq.optim.fp16_optimizer", "_FP16OptimizerMixin"): OPTIMIZER_PHASES,
    ("fairseq.optim.fp16_optimizer", "_MemoryEfficientFP16OptimizerMixin"): OPTIMIZER_PHASES,
    ("fairseq.trainer", "Trainer"): {
        "_aggregate_logging_outputs": "stats sync",
        "clip_grad_norm": "clip",
        "_check_grad_norms": "norm check",
        "_reduce_and_log_stats": "logging",
    },
}


class UpdateTimer:
    """Accumulates the phases of the update in progress; one record per update once past ``warmup``."""

    def __init__(self, out_dir, sync, warmup):
        self.out_dir, self.sync, self.warmup = out_dir, sync, warmup
        self.records, self.current, self.depth = [], None, defaultdict(int)
        self.last_end, self.rank = None, None

    def now(self):
        if self.sync:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, method, phase):
        timer = self

        def timed(*args, **kwargs):
            if timer.current is None or timer.depth[phase]:  # outside an update, or re-entered (super() calls)
                return method(*args, **kwargs)
            timer.depth[phase] += 1
            start = timer.now()
            try:
                return method(*args, **kwargs)
            finally:
                timer.current[phase] += timer.now() - start
                timer.depth[phase] -= 1

        timed.__wrapped__ = method
        return timed

    def wrap_train_step(self, method):
        timer = self

        def train_step(trainer, samples, *args, **kwargs):
            start = timer.now()
            timer.current = defaultdict(float)
            try:
                return method(trainer, samples, *args, **kwargs)
            finally:
                end = timer.now()
                phases, timer.current = timer.current, None
                timer.finish(trainer, phases, start, end, len(samples))

        train_step.__wrapped__ = method
        return train_step

    def finish(self, trainer, phases, start, end, micro_batches):
        if self.last_end is not None and trainer.get_num_updates() > self.warmup:
            phases["forward"] -= phases["backward"]
            record = {p: 1000 * phases.get(p, 0.0) for p in PHASES if p not in ("update", "outside", "other")}
            record["outside"] = 1000 * (start - self.last_end)
            record["other"] = 1000 * (end - start) - sum(v for p, v in record.items() if p != "outside")
            record["update"] = 1000 * (end - self.last_end)
            record["micro_batches"] = micro_batches
            self.records.append(record)
            if len(self.records) % 25 == 0:
                self.write()
        self.last_end = end
        self.rank = trainer.data_parallel_rank

    def write(self):
        if self.rank is not None and self.records:
            record = {"rank": self.rank, "sync": self.sync, "records": self.records}
            write_json(os.path.join(self.out_dir, f"rank{self.rank}.json"), record)


def install(out_dir, sync, warmup):
    """Wrap fairseq's Trainer phases in this process (the parent before spawning, every spawned worker on import)."""
    import importlib

    from fairseq.trainer import Trainer

    timer = UpdateTimer(out_dir, sync, warmup)
    for (module, cls), phases in TIMED.items():
        owner = getattr(importlib.import_module(module), cls)
        for method, phase in phases.items():
            if method in vars(owner):  # only where the class defines it; subclasses' super() calls are not re-counted
                setattr(owner, method, timer.wrap(vars(owner)[method], phase))
    Trainer.train_step = timer.wrap_train_step(Trainer.train_step)
    atexit.register(timer.write)
    return timer


def summarize(records):
    """{phase: median ms over the recorded updates} (+ micro_batches, updates)."""
    out = {p: statistics.median(r[p] for r in records) for p in PHASES}
    out["micro_batches"] = records[0]["micro_batches"]
    out["updates"] = len(records)
    return out


def recipe_command(args, cfg_env, gpus, save_dir):
    """The fairseq-train argument list the recipe would run on ``gpus`` GPUs (its last DRY_RUN line)."""
    env = dict(os.environ, **cfg_env, DRY_RUN="1", NGPU=str(gpus), WARM_START="", DATA=args.data, SAVE_DIR=save_dir,
               MAX_UPDATE=str(args.updates), EXTRA=f"--no-save --disable-validation {args.extra}".strip())  # fmt: skip
    proc = subprocess.run(["bash", args.recipe], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args.recipe} (DRY_RUN=1): {proc.stderr[-2000:]}")
    words = shlex.split(proc.stdout.strip().splitlines()[-1])
    if words[:3] != ["python3", "-m", "fairseq_cli.train"]:
        raise RuntimeError(f"{args.recipe} printed no fairseq-train command: {proc.stdout[-500:]}")
    return words[3:], proc.stderr.strip().splitlines()[-1]


def measure(args, name, cfg_env, gpus, visible):
    run_dir = os.path.join(args.workdir, f"phases_{name}_{gpus}gpu{'_sync' if args.sync else ''}")
    os.makedirs(run_dir, exist_ok=True)
    for old in os.listdir(run_dir):
        if old.startswith("rank"):
            os.remove(os.path.join(run_dir, old))
    fairseq_args, plan = recipe_command(args, cfg_env, gpus, run_dir)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(visible[:gpus]), PYTHONUNBUFFERED="1",
               **{OUT_ENV: run_dir, SYNC_ENV: "1" if args.sync else "0", WARMUP_ENV: str(args.warmup)})  # fmt: skip
    with open(os.path.join(run_dir, "stdout.log"), "w") as log:
        code = subprocess.call([sys.executable, os.path.abspath(__file__), "--fairseq", *fairseq_args],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    if code != 0:
        raise RuntimeError(f"{name} on {gpus} GPU(s) failed (exit {code}): {run_dir}/stdout.log")
    ranks = {}
    for rank in range(gpus):
        path = os.path.join(run_dir, f"rank{rank}.json")
        if not os.path.isfile(path):
            raise RuntimeError(f"{name} on {gpus} GPU(s): rank {rank} recorded nothing ({path}; raise --updates?)")
        with open(path) as f:
            ranks[rank] = summarize(json.load(f)["records"])
    return {"config": name, "gpus": gpus, "plan": plan, "sync": args.sync, "rank0": ranks[0],
            "slowest_rank_update": max(r["update"] for r in ranks.values()), "ranks": ranks}  # fmt: skip


def table(rows):
    lines = ["| config | GPUs | micro-batches | " + " | ".join(PHASES) + " |", "|---" * (len(PHASES) + 3) + "|"]
    for r in rows:
        p = r["rank0"]
        cells = " | ".join(f"{p[phase]:.1f}" for phase in PHASES)
        lines.append(f"| {r['config']} | {r['gpus']} | {p['micro_batches']} | {cells} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="binarized data")
    parser.add_argument("--recipe", default="recipes/wmt14_en_de/train.sh")
    parser.add_argument("--config", action="append", help="NAME:VAR=value ... (train.sh environment)")
    parser.add_argument("--gpu-counts", default="1", help="e.g. 1,2,4")
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=50, help="updates not recorded")
    parser.add_argument("--sync", action="store_true", help="synchronize the GPU at every phase boundary")
    parser.add_argument("--extra", default="", help="more fairseq-train flags (e.g. --cpu for a CPU check)")
    parser.add_argument("--workdir", default="work/update_phases")
    parser.add_argument("--out", help="JSON of every run (medians per rank)")
    args = parser.parse_args()
    if args.warmup >= args.updates:
        parser.error(f"--warmup {args.warmup} leaves no update of --updates {args.updates} to record")
    counts = sorted(int(c) for c in args.gpu_counts.split(","))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(max(counts)))).split(",")
    if max(counts) > len(visible):
        parser.error(f"--gpu-counts {args.gpu_counts}: only {len(visible)} GPU(s) visible")
    rows = [measure(args, name, cfg, k, visible) for name, cfg in parse_configs(args.config) for k in counts]
    print("\n".join(table(rows)))
    if args.out:
        write_json(args.out, {"argv": sys.argv, "rows": rows})


if os.environ.get(OUT_ENV):  # the child (and each worker fairseq spawns from it, which re-imports this file)
    install(os.environ[OUT_ENV], os.environ.get(SYNC_ENV) == "1", int(os.environ.get(WARMUP_ENV, "0")))

if __name__ == "__main__":
    if sys.argv[1:2] == ["--fairseq"]:
        from fairseq_cli.train import cli_main

        sys.argv = ["fairseq-train"] + sys.argv[2:]
        cli_main()
    else:
        main()
