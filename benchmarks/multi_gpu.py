"""Multi-GPU checks of the recipes: the same train.sh / evaluate.sh command on 1 GPU and on all visible GPUs.

The recipes take every visible GPU (fairseq's distributed training, one process per GPU, NCCL) and keep
the effective batch (tokens x GPUs x update-freq), so the only change between the runs compared here is
CUDA_VISIBLE_DEVICES. Subcommands (each prints a markdown table last and writes --out as JSON):

  loss      training loss of the first --updates updates on N GPUs against 1 GPU with update-freq N:
            same seed, same batches, dropout 0, so only the order of floating-point sums differs
  scaling   target words/s of the recipe on each of --gpu-counts (e.g. 1,2,4) over 1 GPU (median of the
            logging intervals after --warmup updates; median of --repeats runs), every run alone on the machine,
            or (--share-machine) the runs on all GPUs alone and the smaller ones packed on disjoint GPUs
  resume    SIGKILL one rank mid-run: the job must stop with an error, and re-running the same command must
            resume from the last checkpoint and finish
  evaluate  evaluate.sh sharded over N GPUs against 1 GPU: the hypotheses files must be identical

    python benchmarks/multi_gpu.py loss --data work/multi30k_en_de/bin --out results/multi_gpu/loss.json
    python benchmarks/multi_gpu.py scaling --data work/multi30k_en_de/bin --updates 320 --warmup 20 \\
        --gpu-counts 1,2,4 --repeats 3 --share-machine --config "transformer:HEADS=transformer" \\
        --config "collab_dk128:HEADS=collab KEY_DIM=128" --config "collab_dk64:HEADS=collab KEY_DIM=64"
    python benchmarks/multi_gpu.py resume --recipe recipes/multi30k_en_de/train.sh --kill-at 900 \\
        --config "collab_dk128:HEADS=collab KEY_DIM=128" --save-dir work/multi_gpu/resume_collab_dk128
    python benchmarks/multi_gpu.py evaluate --evaluate recipes/multi30k_en_de/evaluate.sh \\
        --save-dir work/multi_gpu/resume_collab_dk128

--config NAME:VAR=value ... sets train.sh's environment for one configuration (default: fairseq's
transformer and collaborative heads at D_k=128).
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = ["transformer:HEADS=transformer", "collab_dk128:HEADS=collab KEY_DIM=128"]
# one training-interval line of fairseq's simple log format
INTERVAL = re.compile(r"(?:^|\s)loss=([\d.]+),.*?\bwps=([\d.]+),.*?\bnum_updates=(\d+)")
LOADED = re.compile(r"[Ll]oaded checkpoint (\S+) \(epoch (\d+) @ (\d+) updates\)")


def visible_gpus():
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",")[:count] if visible else [str(i) for i in range(count)]
    if len(ids) < 2:
        sys.exit(
            f"error: {len(ids)} GPU(s) visible; these checks compare 1 GPU with several (set CUDA_VISIBLE_DEVICES)"
        )
    return ids


def parse_configs(specs):
    """['NAME:VAR=value ...'] -> [(name, {VAR: value})]."""
    configs = []
    for spec in specs or DEFAULT_CONFIGS:
        name, _, assignments = spec.partition(":")
        words = shlex.split(assignments)
        if not all("=" in w and not w.startswith("-") for w in words):
            sys.exit(f"error: --config {spec!r}: only VAR=value words are allowed after NAME:")
        configs.append((name, dict(w.split("=", 1) for w in words)))
    return configs


def intervals(log_text):
    """fairseq training log -> {num_updates: (loss, wps)} of its interval lines."""
    return {int(m.group(3)): (float(m.group(1)), float(m.group(2))) for m in INTERVAL.finditer(log_text)}


def start(script, env_updates, gpus, log_path, new_session=False):
    # NGPU: the recipe need not import torch to count the GPUs it is given (seconds per run)
    env = dict(
        os.environ, **env_updates, CUDA_VISIBLE_DEVICES=",".join(gpus), NGPU=str(len(gpus)), PYTHONUNBUFFERED="1"
    )
    with open(log_path, "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen(
            ["bash", script], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session
        )
    proc.log_path = log_path
    return proc


def finish(proc, what):
    if proc.wait() != 0:
        with open(proc.log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}), {proc.log_path}:\n{tail}")
    with open(proc.log_path) as f:
        return f.read()


def run_packed(jobs, gpus, on_finished=lambda key: None):
    """jobs: [(key, script, env, k, log, alone)] run in order on ``gpus``, k GPUs each: a job starts as soon as k GPUs
    (all of them if ``alone``) are free; it may start before an earlier job that does not fit yet, but never before
    one that takes the whole machine. on_finished(key) after each run. -> {key: log text}. Each run is a process
    group of its own; when one fails (or on Ctrl-C) the runs beside it are stopped too, not left training."""
    free, running, logs, pending = list(gpus), [], {}, list(jobs)
    try:
        while pending or running:
            for job in list(pending):
                key, script, env, k, log, alone = job
                need = len(gpus) if alone else k
                if need <= len(free):
                    taken, free = free[:need], free[need:]
                    running.append((key, taken, start(script, env, taken[:k], log, new_session=True)))
                    pending.remove(job)
                elif need == len(gpus):
                    break
            if not running:
                raise ValueError(f"{pending[0][0]}: needs more than the {len(gpus)} GPUs given")
            while all(proc.poll() is None for _, _, proc in running):
                time.sleep(0.2)
            for item in [item for item in running if item[2].poll() is not None]:
                running.remove(item)
                logs[item[0]] = finish(item[2], item[0])
                free = sorted(free + item[1], key=gpus.index)
                on_finished(item[0])
    except BaseException:
        for _, _, proc in running:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for _, _, proc in running:
            proc.wait()
        raise
    return logs


def train_jobs(args, configs, gpus, tag, env_for, side_by_side):
    """1-GPU runs (side_by_side: of all configs at once, one GPU each, while GPUs last), then each N-GPU run."""
    singles, multis = [], []
    for name, cfg_env in configs:
        for n in (1, len(gpus)):
            save_dir = os.path.join(args.workdir, f"{tag}_{name}_{n}gpu")
            shutil.rmtree(save_dir, ignore_errors=True)
            os.makedirs(save_dir)
            env = dict(cfg_env, DATA=args.data, SAVE_DIR=save_dir, SEED=str(args.seed), **env_for(n))
            job = ((name, n), args.recipe, env, n, os.path.join(save_dir, "stdout.log"), not side_by_side)
            (singles if n == 1 else multis).append(job)
    return run_packed(singles + multis, gpus)


def loss_check(args, configs, gpus):
    n = len(gpus)
    env_for = lambda _: dict(  # noqa: E731
        MAX_TOKENS=str(args.max_tokens),
        TOKENS_PER_UPDATE=str(args.max_tokens * n),
        DROPOUT="0",
        MAX_UPDATE=str(args.updates),
        FP16="0" if args.fp32 else "1",
        EXTRA="--no-save --disable-validation --log-interval 1"
        + ("" if args.fp32 else f" --fp16-init-scale {args.fp16_init_scale}"),
    )
    logs = train_jobs(args, configs, gpus, "loss", env_for, side_by_side=True)
    rows = []
    for name, _ in configs:
        one, many = intervals(logs[(name, 1)]), intervals(logs[(name, n)])
        common = sorted(set(one) & set(many))
        if len(common) < args.updates * 0.9:
            raise RuntimeError(f"{name}: only {len(common)} of {args.updates} updates logged by both runs")
        diffs = [abs(one[u][0] - many[u][0]) for u in common]
        rows.append(
            {
                "config": name,
                "updates": len(common),
                "loss_1gpu": [one[u][0] for u in common],
                f"loss_{n}gpu": [many[u][0] for u in common],
                "max_abs_diff": max(diffs),
                "mean_abs_diff": statistics.mean(diffs),
                "tolerance": args.tolerance,
                "match": max(diffs) <= args.tolerance,
            }
        )
    table = [
        f"| config | updates | loss at 1 / last (1 GPU) | loss at 1 / last ({n} GPUs) | max abs diff | mean abs diff | within {args.tolerance} |",  # noqa: E501
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["loss_1gpu"], r[f"loss_{n}gpu"]
        table.append(
            f"| {r['config']} | {r['updates']} | {a[0]:.3f} / {a[-1]:.3f} | {b[0]:.3f} / {b[-1]:.3f} "
            f"| {r['max_abs_diff']:.3f} | {r['mean_abs_diff']:.4f} | {'yes' if r['match'] else 'NO'} |"
        )
    ok = all(r["match"] for r in rows)
    return {"gpus": n, "max_tokens": args.max_tokens, "fp32": args.fp32, "rows": rows}, table, ok


def gpu_counts(spec, gpus):
    """'1,2,4' -> [1, 2, 4] (default: 1 and all visible GPUs); refuses counts the machine does not have."""
    counts = sorted({int(c) for c in spec.split(",")}) if spec else [1, len(gpus)]
    if counts[0] != 1 or counts[-1] > len(gpus):
        sys.exit(f"error: --gpu-counts {spec}: must start at 1 and stay within the {len(gpus)} visible GPUs")
    return counts


UPS = re.compile(r"(?:^|\s)ups=([\d.]+),.*?\bnum_updates=(\d+)")


def median_wps(log_text, warmup, what):
    samples = [w for u, (_, w) in intervals(log_text).items() if u > warmup]
    if not samples:
        raise RuntimeError(f"{what}: no interval after update {warmup}; raise --updates")
    return statistics.median(samples)


def median_ups(log_text, warmup):
    """Updates per second, median of the logging intervals after ``warmup`` (None if the log has none)."""
    samples = [float(m.group(1)) for m in UPS.finditer(log_text) if int(m.group(2)) > warmup]
    return statistics.median(samples) if samples else None


def run_dir(workdir, name, k, repeat):
    """The scaling run of (config, GPU count, repeat): its save dir, with its log in stdout.log."""
    return os.path.join(workdir, f"scaling_{name}_{k}gpu_r{repeat}")


def scaling_log(workdir, name, k, repeat):
    """That run's log (``--from-logs`` also takes ``<run dir>.log``, the logs copied flat off a GPU machine)."""
    flat = run_dir(workdir, name, k, repeat) + ".log"
    return flat if os.path.isfile(flat) else os.path.join(run_dir(workdir, name, k, repeat), "stdout.log")


def finished_log(path, updates):
    """The log's text if its run logged update ``updates`` (a complete run), else None."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read()
    return text if updates in intervals(text) else None


def scaling(args, configs, gpus):
    """Words/s of each config on each GPU count, --repeats times (repeats interleaved, so drift spreads over all
    counts); the median repeat per (config, GPUs). Every run alone on the machine, or (--share-machine) the
    whole-machine runs alone and the others packed side by side on disjoint GPUs. The JSON (--out) is rewritten
    after every run once a repeat is complete, from every complete run so far (a run cut short keeps them);
    --from-logs tabulates the complete runs of an earlier run's logs without training."""
    counts = gpu_counts(args.gpu_counts, gpus)
    if args.from_logs:
        return scaling_result(args, configs, counts, _logged_commit(args.workdir), args.repeats)
    env = dict(MAX_UPDATE=str(args.updates), EXTRA="--no-save --disable-validation --log-interval 10")
    if args.max_tokens:
        env["MAX_TOKENS"] = str(args.max_tokens)
    if args.tokens_per_update:
        env["TOKENS_PER_UPDATE"] = str(args.tokens_per_update)
    commit = _commit()
    jobs = []
    for repeat in range(args.repeats):
        for k in counts:
            for name, cfg_env in configs:
                log = os.path.join(run_dir(args.workdir, name, k, repeat), "stdout.log")
                shutil.rmtree(os.path.dirname(log), ignore_errors=True)  # no earlier invocation's logs are read
                os.makedirs(os.path.dirname(log))
                run_env = dict(cfg_env, DATA=args.data, SAVE_DIR=os.path.dirname(log), SEED=str(args.seed), **env)
                jobs.append(((name, k, repeat), args.recipe, run_env, k, log, not args.share_machine))
    if args.share_machine:
        # the whole-machine runs first, one after another; then the rest packed side by side, repeat by repeat and
        # the larger runs of a repeat first (a 1-GPU run of a later repeat may fill a GPU that would idle): with
        # smaller runs first, 1-GPU runs of every repeat took the GPUs and the 2-GPU runs waited for all of them
        jobs.sort(key=lambda job: (job[3] != len(gpus), job[0][2], -job[3]))
    done = set()

    def rewrite_json(key):  # after every run once a repeat is complete: every complete run so far (kept if cut)
        done.add(key)
        complete = [r for r in range(args.repeats) if all((n, k, r) in done for n, _ in configs for k in counts)]
        if args.out and complete:
            result = scaling_result(args, configs, counts, commit, args.repeats)
            write_json(args.out, dict(result[0], check="scaling", repeats_done=len(complete), argv=sys.argv))

    run_packed(jobs, gpus, rewrite_json)
    return scaling_result(args, configs, counts, commit, args.repeats)


def scaling_result(args, configs, counts, commit, repeats):
    """(result, table, ok) from the complete runs among the first ``repeats`` repeats' logs under args.workdir."""
    rows = []
    for name, _ in configs:
        logs = {}
        for k in counts:
            found = [finished_log(scaling_log(args.workdir, name, k, r), args.updates) for r in range(repeats)]
            logs[k] = [text for text in found if text is not None]
            if not logs[k]:
                raise RuntimeError(f"{name} on {k} GPU(s): no complete run ({args.updates} updates) in {args.workdir}")
        per_count = {k: [median_wps(t, args.warmup, f"{name} on {k} GPU(s)") for t in logs[k]] for k in counts}
        one = statistics.median(per_count[1])
        for k in counts:
            wps = statistics.median(per_count[k])
            batch = re.search(r"= (\d+) tokens/update", logs[k][0])
            ups = [median_ups(t, args.warmup) for t in logs[k]]
            rows.append(
                {"config": name, "gpus": k, "wps": wps, "wps_1gpu": one, "speedup": wps / one,
                 "efficiency": wps / one / k, "repeats": per_count[k],
                 "ups": statistics.median(ups) if None not in ups else None,
                 "tokens_per_update": int(batch.group(1)) if batch else None}
            )  # fmt: skip
    table = [
        "| config | GPUs | tokens/update | words/s (median of repeats) | repeats | speed-up | efficiency |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = " / ".join(f"{w:,.0f}" for w in r["repeats"])
        table.append(
            f"| {r['config']} | {r['gpus']} | {r['tokens_per_update']} | {r['wps']:,.0f} | {spread} "
            f"| {r['speedup']:.2f}x | {r['efficiency']:.0%} |"
        )
    ok = all(r["speedup"] >= args.target for r in rows if r["gpus"] == counts[-1])
    result = {"gpu_counts": counts, "updates": args.updates, "warmup": args.warmup, "repeats": args.repeats,
              "share_machine": args.share_machine}  # fmt: skip
    return dict(result, commit=commit, rows=rows, target=args.target), table, ok


def _logged_commit(workdir):
    """The code record a GPU run left next to its logs (``python collab_fairseq/provenance.py > code.json``)."""
    path = os.path.join(workdir, "code.json")
    if not os.path.isfile(path):
        sys.exit(f"error: --from-logs: {path} is missing; write the measured checkout's provenance.py output there")
    with open(path) as f:
        return json.load(f)


def write_json(path, result):
    """Replace ``path`` whole (a reader never sees half a file); stdlib only, like the rest of this launcher."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False) as tmp:
        json.dump(result, tmp, indent=1)
    os.replace(tmp.name, path)


def _commit():
    """collab_fairseq/provenance.py's record of this checkout (run as a file: stdlib only, no fairseq import)."""
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "collab_fairseq", "provenance.py")], capture_output=True, text=True
    )
    return json.loads(out.stdout) if out.returncode == 0 else None


def session_processes(session_id):
    """{pid: (parent pid, command line)} of the processes in a session."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid, sid = int(fields[1]), int(fields[3])
        if sid == session_id:
            procs[int(entry)] = (ppid, cmdline)
    return procs


def rank_pids(session_id):
    """PIDs of fairseq's spawned worker processes (children of the fairseq_cli.train process) in a session."""
    procs = session_processes(session_id)
    mains = {pid for pid, (_, cmd) in procs.items() if "fairseq_cli.train" in cmd}
    return sorted(pid for pid, (ppid, cmd) in procs.items() if ppid in mains and "spawn_main" in cmd)


def leftover_processes(session_id, grace_s):
    """Command lines still running in the session after up to grace_s seconds (helpers such as
    multiprocessing's resource tracker exit shortly after the job; a loaded machine makes that slower)."""
    deadline = time.time() + grace_s
    while True:
        left = [cmd[:120] for _, (_, cmd) in sorted(session_processes(session_id).items())]
        if not left or time.time() > deadline:
            return left
        time.sleep(0.5)


def last_update(path):
    try:
        with open(path) as f:
            found = intervals(f.read())
    except OSError:
        return 0
    return max(found, default=0)


def resume(args, configs, gpus):
    ((name, cfg_env),) = configs
    save_dir = args.save_dir
    if args.fresh:
        shutil.rmtree(save_dir, ignore_errors=True)
    os.makedirs(save_dir, exist_ok=True)
    env = dict(cfg_env, SAVE_DIR=save_dir, SEED=str(args.seed), **({"DATA": args.data} if args.data else {}))
    first = start(args.recipe, env, gpus, os.path.join(save_dir, "run1_killed.log"), new_session=True)
    checkpoint = os.path.join(save_dir, "checkpoint_last.pt")
    deadline = time.time() + args.timeout
    while last_update(os.path.join(save_dir, "train.log")) < args.kill_at or not os.path.exists(checkpoint):
        if first.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"run ended or timed out before update {args.kill_at}: see {first.log_path}")
        time.sleep(1)
    ranks = rank_pids(first.pid)
    if len(ranks) != len(gpus):
        os.killpg(first.pid, signal.SIGKILL)
        raise RuntimeError(f"found {len(ranks)} worker processes for {len(gpus)} GPUs: {ranks}")
    killed_at = last_update(os.path.join(save_dir, "train.log"))
    victim = ranks[args.kill_rank]
    os.kill(victim, signal.SIGKILL)
    t_kill = time.time()
    try:
        rc = first.wait(timeout=args.stop_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(first.pid, signal.SIGKILL)
        raise RuntimeError(f"the job did not stop within {args.stop_timeout}s of killing rank {args.kill_rank}")
    stop_s = time.time() - t_kill
    with open(first.log_path) as f:
        first_log = f.read()
    errors = [line for line in first_log.splitlines() if re.search(r"error:|Error\b|Exception|terminated", line)]
    leftover = leftover_processes(first.pid, grace_s=30)
    second = start(args.recipe, env, gpus, os.path.join(save_dir, "run2_resumed.log"))
    second_log = finish(second, "the re-run")
    loaded = LOADED.search(second_log)
    result = {
        "config": name,
        "gpus": len(gpus),
        "killed_rank": args.kill_rank,
        "killed_pid": victim,
        "killed_at_update": killed_at,
        "exit_status": rc,
        "stopped_after_s": round(stop_s, 1),
        "leftover_workers": leftover,
        "error_lines": errors[-6:],
        "resumed_from_update": int(loaded.group(3)) if loaded else None,
        "final_update": last_update(os.path.join(save_dir, "train.log")),
    }
    ok = rc != 0 and not leftover and loaded is not None and 0 < result["resumed_from_update"] <= killed_at
    table = [
        "| config | GPUs | killed rank at update | exit status | stopped after | resumed from update | finished at update |",  # noqa: E501
        "|---|---|---|---|---|---|---|",
        f"| {name} | {len(gpus)} | {args.kill_rank} at {killed_at} | {rc} | {stop_s:.1f} s "
        f"| {result['resumed_from_update']} | {result['final_update']} |",
    ]
    table += ["", "error lines of the stopped job:", *[f"    {line.strip()[:200]}" for line in errors[-6:]]]
    return result, table, ok


def evaluate(args, configs, gpus):
    n, rows = len(gpus), []
    for save_dir in args.save_dir:
        outputs = {}
        for k, use in ((n, gpus), (1, gpus[:1])):
            hyp = os.path.join(save_dir, f"hypotheses_{k}gpu.txt")
            env = dict(SAVE_DIR=save_dir, RESULT=os.path.join(save_dir, f"bleu_{k}gpu.json"), HYPOTHESES=hyp)
            if args.data:
                env["DATA"] = args.data
            t0 = time.time()
            finish(start(args.evaluate, env, use, os.path.join(save_dir, f"evaluate_{k}gpu.log")), f"evaluate {k} GPU")
            with open(env["RESULT"]) as f, open(hyp, "rb") as h:
                outputs[k] = (json.load(f), h.read(), time.time() - t0)
        (res_n, hyp_n, t_n), (res_1, hyp_1, t_1) = outputs[n], outputs[1]
        rows.append(
            {
                "save_dir": save_dir,
                "bleu_1gpu": res_1["sacrebleu"],
                f"bleu_{n}gpu": res_n["sacrebleu"],
                "shards": res_n["shards"],
                "identical_hypotheses": hyp_n == hyp_1,
                "sentences": res_1["sentences"],
                "seconds_1gpu": round(t_1, 1),
                f"seconds_{n}gpu": round(t_n, 1),
                "signature": res_1["signature"],
            }
        )
    table = [
        f"| run | sentences | BLEU 1 GPU | BLEU {n} GPUs ({n} shards) | identical hypotheses | time 1 GPU | time {n} GPUs |",  # noqa: E501
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = "yes" if r["identical_hypotheses"] else "NO"
        table.append(
            f"| {os.path.basename(r['save_dir'])} | {r['sentences']} | {r['bleu_1gpu']} | {r[f'bleu_{n}gpu']} "
            f"| {same} | {r['seconds_1gpu']} s | {r[f'seconds_{n}gpu']} s |"
        )
    ok = all(r["identical_hypotheses"] and r["bleu_1gpu"] == r[f"bleu_{n}gpu"] for r in rows)
    return {"gpus": n, "rows": rows}, table, ok


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="check", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", help="binarized data (default: the recipe's)")
    common.add_argument("--config", action="append", help="NAME:VAR=value ... (train.sh environment)")
    common.add_argument("--recipe", default="recipes/wmt14_en_de/train.sh")
    common.add_argument("--workdir", default="work/multi_gpu")
    common.add_argument("--seed", type=int, default=1)
    common.add_argument("--out", help="write the results as JSON here")
    p = sub.add_parser("loss", parents=[common])
    p.add_argument("--updates", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--tolerance", type=float, default=0.02, help="max |loss difference| accepted (fp16 noise)")
    p.add_argument("--fp32", action="store_true", help="train in fp32 (default: the recipe's --fp16)")
    p.add_argument(
        "--fp16-init-scale",
        type=int,
        default=16,
        help="a loss scale that does not overflow at the start: an overflow skips the batch, and 1 GPU (fp16 "
        "gradients summed over update-freq micro-batches) and N GPUs do not overflow on the same updates",
    )
    p = sub.add_parser("scaling", parents=[common])
    p.add_argument("--updates", type=int, default=320)
    p.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="updates left out of the median (with cuDNN's attention on, the transformer's speed ramped up over "
        "~200 updates on 4 GPUs while it built graphs for new batch shapes; collab's is flat after ~10)",
    )
    p.add_argument("--max-tokens", type=int, help="tokens per GPU per step (default: the recipe's)")
    p.add_argument("--tokens-per-update", type=int, help="effective batch (default: the recipe's)")
    p.add_argument("--target", type=float, default=1.8, help="speed-up expected on the largest GPU count")
    p.add_argument("--gpu-counts", help="e.g. 1,2,4 (default: 1 and all visible GPUs)")
    p.add_argument("--repeats", type=int, default=1, help="runs per (config, GPU count); the median is reported")
    p.add_argument(
        "--share-machine",
        action="store_true",
        help="the runs on all GPUs alone, one after another; the smaller ones (all configs, all repeats) side by "
        "side on disjoint GPUs, repeat by repeat, larger first, each started as soon as enough GPUs are free: "
        "~2x less machine time; they then share the host's CPUs and PCIe",
    )
    p.add_argument(
        "--from-logs",
        action="store_true",
        help="no training: tabulate the complete runs whose logs are in --workdir (scaling_<config>_<k>gpu_r<i>"
        ".log or .../stdout.log) with the commit in --workdir/code.json",
    )
    p = sub.add_parser("resume", parents=[common])
    p.add_argument("--save-dir", required=True)
    p.add_argument("--kill-at", type=int, required=True, help="kill a rank once train.log shows this update")
    p.add_argument("--kill-rank", type=int, default=1)
    p.add_argument("--fresh", action="store_true", help="delete --save-dir first")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--stop-timeout", type=int, default=300, help="seconds the job may take to stop after the kill")
    p = sub.add_parser("evaluate", parents=[common])
    p.add_argument("--evaluate", default="recipes/wmt14_en_de/evaluate.sh")
    p.add_argument("--save-dir", action="append", required=True, help="trained run (repeatable)")
    args = parser.parse_args()
    from_logs = getattr(args, "from_logs", False)
    if from_logs and not args.gpu_counts:
        parser.error("--from-logs needs the --gpu-counts the logs were made with (e.g. 1,2,4)")
    gpus = [str(i) for i in range(max(map(int, args.gpu_counts.split(","))))] if from_logs else visible_gpus()
    configs = parse_configs(args.config)
    if args.check == "resume" and len(configs) != 1:
        parser.error("resume takes exactly one --config")
    os.makedirs(args.workdir, exist_ok=True)
    result, table, ok = {"loss": loss_check, "scaling": scaling, "resume": resume, "evaluate": evaluate}[args.check](
        args, configs, gpus
    )
    result.update(check=args.check, passed=ok, argv=sys.argv)
    if args.out:
        write_json(args.out, result)
    print("\n".join(table))
    print(f"{args.check}: {'PASSED' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
