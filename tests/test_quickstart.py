"""quickstart.sh end to end on the real Multi30k (few updates): progress while it trains, a re-run that only reports,
paths passed to Python as arguments (the work directory's name has a quote in it)."""

import subprocess
import threading
import time

import pytest

from tests.helpers import REPO, SHARED_DATA

MULTI30K = SHARED_DATA / "multi30k_en_de"


def _run_timed(env):
    """Run quickstart.sh; returns (exit status, stdout, [(seconds since start, stderr line)])."""
    proc = subprocess.Popen(
        ["bash", str(REPO / "quickstart.sh"), "--raw-dir", str(MULTI30K), "--vocab-size", "2000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    start, lines = time.monotonic(), []

    def read_stderr():
        for line in iter(proc.stderr.readline, ""):
            lines.append((time.monotonic() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read_stderr)
    reader.start()
    out = proc.stdout.read()
    proc.wait(timeout=900)
    reader.join()
    return proc.returncode, out, lines


def _first(lines, prefix):
    return next((t for t, line in lines if line.startswith(prefix)), None)


@pytest.mark.slow
def test_quickstart_shows_progress_while_training_and_a_second_run_only_reports(tmp_path):
    if not (MULTI30K / "train.en.gz").exists():
        pytest.skip(f"{MULTI30K} not available")
    work = tmp_path / "it's here"
    env = dict(__import__("os").environ, WORK=str(work / "runs"), DATA_DIR=str(work / "m30k"), UPDATES="60")
    status, out, lines = _run_timed(env)
    log = "\n".join(line for _, line in lines)
    assert status == 0, log[-3000:]
    training, progress = _first(lines, "[quickstart] training"), _first(lines, "[quickstart] update 20/60")
    translating = _first(lines, "[quickstart] translating")
    assert None not in (training, progress, translating), log[-3000:]
    # the first line comes while it trains (40 updates, several seconds, still to go), not with the rest at the end
    assert progress - training < 60 and translating - progress > 3, log[-3000:]
    bleu = [line for line in out.splitlines() if line.startswith("test2016 sacreBLEU = ")]
    assert len(bleu) == 1, out
    run = work / "runs" / "collab_dk32_u60_s1"
    kept = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    assert {"bleu.json", "hypotheses.txt", "train.log", "checkpoint_best.pt", ".trained"} <= set(kept)

    status, again, lines = _run_timed(env)
    log = "\n".join(line for _, line in lines)
    assert status == 0, log[-3000:]
    assert "is trained and evaluated already" in log and "[quickstart] training" not in log
    assert [line for line in again.splitlines() if line.startswith("test2016 sacreBLEU = ")] == bleu
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == kept


def test_the_shell_scripts_pass_values_to_python_as_arguments():
    """A path pasted into Python source is a SyntaxError when it holds a quote, and code when crafted: every
    ``python3 -c`` of the shell scripts takes its values from sys.argv or the environment, never from $VARIABLES."""
    scripts = [p for p in REPO.rglob("*.sh") if not {".venv", "work"} & set(p.relative_to(REPO).parts)]
    offenders = []
    for script in scripts:
        text = script.read_text()
        for source in __import__("re").findall(r"python3?(?: -u)? -c (\"[^\"]*\"|'[^']*')", text):
            if source.startswith('"') and "$" in source:
                offenders.append(f"{script.relative_to(REPO)}: {source[:80]}")
    assert len(scripts) > 10 and not offenders, offenders
