"""The multi-GPU tools on the CPU: benchmarks/multi_gpu.py (its kill-a-rank check on a stand-in for fairseq-train
that spawns two ranks like it; scaling; wmt14_cost), and update_phases.py on the tiny copy task.

The stand-in logs fairseq's interval lines, saves checkpoint_last every 5 updates and, when one exists,
prints fairseq's "loaded checkpoint" line and continues from it; the recipe wraps it as train.sh does.
Its ranks meet at a barrier every update, as fairseq's ranks meet in the gradient all-reduce: once a rank
is killed the others cannot train on (without it rank 0 raced past the update the check read, under load).
"""

import json
import os
import subprocess
import sys
import time
import types

import multi_gpu
import pytest
import update_phases
import wmt14_cost

from tests.helpers import REPO
from tests.test_recipes_end_to_end import TINY

FAKE_TRAIN = """
import os, time, torch.multiprocessing as mp
SAVE = os.environ["SAVE_DIR"]
def work(rank, start, barrier):
    for u in range(start + 1, 31):
        barrier.wait(timeout=60)  # the all-reduce
        if rank == 0:
            with open(f"{SAVE}/train.log", "a") as f:
                f.write(f"epoch 001: loss={10 - u / 10:.3f}, nll_loss=1, wps=100.0, ups=1, num_updates={u}, lr=1\\n")
            if u % 5 == 0:  # written atomically, as fairseq saves checkpoints
                open(f"{SAVE}/checkpoint.tmp", "w").write(str(u))
                os.replace(f"{SAVE}/checkpoint.tmp", f"{SAVE}/checkpoint_last.pt")
        time.sleep(0.1)
if __name__ == "__main__":
    start = 0
    if os.path.exists(f"{SAVE}/checkpoint_last.pt"):
        start = int(open(f"{SAVE}/checkpoint_last.pt").read())
        print(f"loaded checkpoint {SAVE}/checkpoint_last.pt (epoch 1 @ {start} updates)", flush=True)
    mp.spawn(work, args=(start, mp.get_context("spawn").Barrier(2)), nprocs=2)
"""
RECIPE = """set -uo pipefail
python3 -m fairseq_cli.train 2>&1 | tee -a "$SAVE_DIR/stdout_all.log"
status=${PIPESTATUS[0]}
(( status == 0 )) || echo "error: fairseq-train stopped with exit status $status" >&2
exit $status
"""


def test_killing_a_rank_stops_the_job_and_the_same_command_resumes(tmp_path, monkeypatch):
    (tmp_path / "fake" / "fairseq_cli").mkdir(parents=True)
    (tmp_path / "fake" / "fairseq_cli" / "__init__.py").write_text("")
    (tmp_path / "fake" / "fairseq_cli" / "train.py").write_text(FAKE_TRAIN)
    (tmp_path / "recipe.sh").write_text(RECIPE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    args = types.SimpleNamespace(
        save_dir=str(tmp_path / "run"),
        fresh=True,
        seed=1,
        data=None,
        kill_at=12,
        recipe=str(tmp_path / "recipe.sh"),
        kill_rank=1,
        timeout=120,
        stop_timeout=60,
    )
    result, table, ok = multi_gpu.resume(args, [("stand_in", {})], ["0", "1"])
    assert result["exit_status"] != 0 and result["leftover_workers"] == [], result
    assert ok, result
    assert any("process 1 terminated with signal SIGKILL" in line for line in result["error_lines"])
    assert 10 <= result["resumed_from_update"] <= result["killed_at_update"] and result["final_update"] == 30
    assert "| stand_in | 2 | 1 at" in table[2]


def test_interval_lines_are_read_from_fairseq_logs():
    line = (
        "2026-11-26 04:12:06 | INFO | train_inner | epoch 001:      2 / 581 loss=13.761, nll_loss=13.769, "
        "ppl=13955.7, wps=194.1, ups=0.23, wpb=848, bsz=56, num_updates=2, lr=2.0998e-06, gnorm=7.406"
    )
    valid = "epoch 001 | valid on 'valid' subset | loss 9.79 | nll_loss 9.1 | num_updates 53"
    assert multi_gpu.intervals(line + "\n" + valid) == {2: (13.761, 194.1)}


SCALING_RECIPE = """n=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\\n' | wc -l)
echo "gpus=$CUDA_VISIBLE_DEVICES"
[ "$NGPU" = "$n" ] || { echo "NGPU=$NGPU for $n GPUs" >&2; exit 1; }
echo "started=$(date +%s.%N)"
sleep 0.3
echo "[train] ... = 32768 tokens/update (target 32768)"
for u in 10 20 30 40; do
  echo "epoch 001: loss=1.000, nll_loss=1, wps=$((1000 * n + u)), ups=1, num_updates=$u, lr=1"
done
echo "ended=$(date +%s.%N)"
"""


def run_spans(work, configs):
    """{run dir name: (GPUs, start, end)} of the stand-in's runs of ``configs`` under ``work``."""
    spans = {}
    for log in [log for c in configs for log in work.glob(f"scaling_{c}_*/stdout.log")]:
        fields = dict(line.split("=", 1) for line in log.read_text().splitlines() if line.split("=")[0] in (
            "gpus", "started", "ended"))  # fmt: skip
        spans[log.parent.name] = (set(fields["gpus"].split(",")), float(fields["started"]), float(fields["ended"]))
    return spans


def overlapping(spans):
    """Pairs of runs that ran at the same time."""
    names = sorted(spans)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if
            spans[a][1] < spans[b][2] and spans[b][1] < spans[a][2]]  # fmt: skip


def test_scaling_runs_each_gpu_count_alone_with_repeats_and_reports_the_median(tmp_path):
    recipe = tmp_path / "train.sh"
    recipe.write_text(SCALING_RECIPE)
    args = types.SimpleNamespace(
        gpu_counts="1,2,4", updates=40, warmup=15, max_tokens=None, tokens_per_update=None, repeats=3,
        workdir=str(tmp_path / "work"), data="unused", seed=1, recipe=str(recipe), target=3.5, share_machine=False,
        out=None, from_logs=False,
    )  # fmt: skip
    result, table, ok = multi_gpu.scaling(args, [("transformer", {})], ["0", "1", "2", "3"])
    rows = {r["gpus"]: r for r in result["rows"]}
    assert sorted(rows) == [1, 2, 4] and result["commit"]["code"]
    assert rows[4]["repeats"] == [4030.0] * 3 and rows[4]["wps"] == 4030.0  # median of the intervals after 15
    assert abs(rows[4]["speedup"] - 4030 / 1030) < 1e-9 and rows[4]["tokens_per_update"] == 32768
    assert ok and len(table) == 2 + 3
    assert rows[1]["ups"] == 1.0  # the stand-in logs ups=1
    assert not overlapping(run_spans(tmp_path / "work", ["transformer"]))  # without --share-machine every run is alone
    args.share_machine = True  # two configs: their 1- and 2-GPU runs side by side on disjoint GPUs
    result, _, _ = multi_gpu.scaling(args, [("a", {}), ("b", {})], ["0", "1", "2", "3"])
    assert {(r["config"], r["gpus"], r["wps"]) for r in result["rows"]} == {
        (c, k, 1000.0 * k + 30) for c in "ab" for k in (1, 2, 4)
    }
    work = tmp_path / "work"
    spans = run_spans(work, ["a", "b"])
    together = overlapping(spans)
    assert ("scaling_a_1gpu_r0", "scaling_b_1gpu_r0") in together  # packed side by side ...
    assert all(not spans[a][0] & spans[b][0] for a, b in together)  # ... on disjoint GPUs
    assert all(spans[a][0] == {"0", "1", "2", "3"} for a in spans if "_4gpu_" in a)
    assert not [pair for pair in together if "_4gpu_" in pair[0] + pair[1]]  # runs on every GPU ran alone
    assert max(spans[a][2] for a in spans if "_4gpu_" in a) <= min(spans[a][1] for a in spans if "_4gpu_" not in a)
    assert spans["scaling_b_2gpu_r0"][1] <= spans["scaling_a_1gpu_r0"][1]  # a repeat's larger runs first
    assert spans["scaling_b_2gpu_r0"][1] <= spans["scaling_a_2gpu_r1"][1]  # repeat by repeat
    out = tmp_path / "scaling.json"  # --out is rewritten after every repeat; --from-logs re-reads the same logs
    args.out, args.repeats = str(out), 2
    first, _, _ = multi_gpu.scaling(args, [("a", {}), ("b", {})], ["0", "1", "2", "3"])
    assert json.loads(out.read_text())["repeats_done"] == 2
    (work / "code.json").write_text(json.dumps({"commit": "abc", "dirty": False, "code": "123"}))
    (work / "scaling_b_4gpu_r1" / "stdout.log").write_text("cut short\n")  # an incomplete run is left out
    args.from_logs = True
    again, table, _ = multi_gpu.scaling(args, [("a", {}), ("b", {})], ["0", "1", "2", "3"])
    assert again["commit"]["commit"] == "abc" and again["rows"][:3] == first["rows"][:3]
    assert [r["repeats"] for r in again["rows"] if r["config"] == "b" and r["gpus"] == 4] == [[4030.0]]
    args.from_logs, args.repeats = False, 1  # the second repeat's logs of the run before are not this run's
    once, _, _ = multi_gpu.scaling(args, [("a", {}), ("b", {})], ["0", "1", "2", "3"])
    assert all(len(r["repeats"]) == 1 for r in once["rows"])
    assert multi_gpu.gpu_counts("1,2", ["0", "1"]) == [1, 2]
    with pytest.raises(SystemExit, match="within the 2 visible GPUs"):
        multi_gpu.gpu_counts("1,4", ["0", "1"])


def test_wmt14_cost_turns_updates_per_second_into_hours_and_marks_extrapolation(tmp_path, capsys):
    scaling = {
        "rows": [{"config": "transformer", "gpus": 1, "ups": 0.5}, {"config": "transformer", "gpus": 4, "ups": 1.6}]
    }
    rows = {r["gpus"]: r for r in wmt14_cost.cost_rows(scaling, 36_000, extrapolate=[8])}
    assert rows[1]["hours"] == 20.0 and rows[1]["gpu_hours"] == 20.0
    assert rows[4]["hours"] == 6.25 and rows[4]["gpu_hours"] == 25.0 and rows[4]["measured"]
    assert rows[8]["efficiency_assumed"] == 0.8 and rows[8]["hours"] == 36_000 / (0.5 * 8 * 0.8) / 3600
    path = tmp_path / "scaling.json"
    path.write_text(json.dumps({"rows": [{"config": "collab", "gpus": 1, "wps": 1.0}]}))
    with pytest.raises(SystemExit, match="no updates/s"):
        wmt14_cost.main([str(path)])


def test_update_phases_times_the_recipes_own_command_phase_by_phase(copy_data, tmp_path):
    """benchmarks/update_phases.py on the CPU: the WMT14 recipe's fairseq-train command (2 micro-batches per
    update), every phase timed on each recorded update, and the phases add up to the update."""
    _, bin_dir = copy_data
    tiny = TINY.replace("--num-workers 0", "--num-workers 0 --cpu")
    batch = "FP16=0 MAX_TOKENS=512 TOKENS_PER_UPDATE=1024"
    out = tmp_path / "phases.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/update_phases.py", "--data", str(bin_dir), "--updates", "12", "--warmup", "4",
         "--workdir", str(tmp_path / "work"), "--extra", tiny, "--out", str(out),
         "--config", f"transformer:HEADS=transformer {batch}", "--config", f"collab:HEADS=collab KEY_DIM=8 {batch}"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["gpus"]) for r in rows] == [("transformer", 1), ("collab", 1)]
    for row in rows:
        assert "1 GPU(s) x 512 tokens x update-freq 2" in row["plan"]
        records = json.loads((tmp_path / "work" / f"phases_{row['config']}_1gpu" / "rank0.json").read_text())
        assert len(records["records"]) == 12 - 4  # the updates after the warm-up
        for r in records["records"]:
            assert r["micro_batches"] == 2 and r["forward"] > 0 and r["backward"] > 0 and r["optimizer"] > 0
            parts = sum(r[p] for p in update_phases.PHASES if p != "update")
            assert abs(parts - r["update"]) < 1e-6 * max(1.0, r["update"])
            assert r["other"] >= 0 and r["outside"] >= 0  # no phase is timed twice (they fit in train_step)
    assert "| collab | 1 | 2 |" in proc.stdout


def test_a_failed_run_stops_the_runs_beside_it(tmp_path):
    slow, bad = tmp_path / "slow.sh", tmp_path / "bad.sh"
    slow.write_text('sleep 60 & echo $! > "$SAVE_DIR/child.pid"; wait; echo finished\n')  # a child, as fairseq's
    bad.write_text("sleep 0.5; echo broken; exit 3\n")
    jobs = [
        (name, str(script), {"SAVE_DIR": str(tmp_path)}, 1, str(tmp_path / f"{name}.log"), False)
        for name, script in (("slow", slow), ("bad", bad))
    ]
    started = time.time()
    with pytest.raises(RuntimeError, match=r"bad failed \(exit 3\)"):
        multi_gpu.run_packed(jobs, ["0", "1"])
    assert time.time() - started < 30
    child = int((tmp_path / "child.pid").read_text())
    with pytest.raises(ProcessLookupError):  # the slow run's own child is gone too, not just its shell
        for _ in range(50):
            os.kill(child, 0)
            time.sleep(0.1)
    assert "finished" not in (tmp_path / "slow.log").read_text()
