"""What the step benchmarks share: a fairseq model, criterion and task built from training flags, random batches
of a given shape, the --config loop over a synthetic dictionary, and configurations timed in turns.

Imported by profile_training_step.py, profile_decode_step.py, step_flops.py, decode_step_counts.py and
gradient_range.py (run as scripts from benchmarks/), and by the tests (pytest's pythonpath).
"""

import argparse
import os
import shlex
import sys
import tempfile
from typing import List

import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

USER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collab_fairseq")


def build(flags, data_dir):
    """fairseq model + criterion + task from training flags."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        [
            data_dir,
            "--user-dir",
            USER_DIR,
            "--task",
            "translation",
            "-s",
            "src",
            "-t",
            "tgt",
            "--share-all-embeddings",
            "--criterion",
            "label_smoothed_cross_entropy",
            "--label-smoothing",
            "0.1",
            *shlex.split(flags),
        ],
    )
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model), task.build_criterion(cfg.criterion), task


def batches(task, n, sentences, tokens, device, padded=True):
    """n samples of sentences x tokens random words; padded: lengths drawn between tokens/2 and tokens."""
    gen = torch.Generator().manual_seed(0)
    vocab, pad, eos = len(task.source_dictionary), task.source_dictionary.pad(), task.source_dictionary.eos()
    out = []
    for _ in range(n):
        lengths = torch.randint(tokens // 2 if padded else tokens, tokens + 1, (sentences,), generator=gen)
        src = torch.randint(4, vocab, (sentences, tokens), generator=gen)
        src[torch.arange(tokens)[None, :] >= lengths[:, None]] = pad  # right padding
        tgt = torch.randint(4, vocab, (sentences, tokens), generator=gen)
        tgt[:, -1] = eos
        prev = torch.cat([tgt.new_full((sentences, 1), eos), tgt[:, :-1]], dim=1)
        sample = {
            "net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
            "target": tgt,
            "ntokens": int(tgt.numel()),
            "nsentences": sentences,
        }
        out.append(_to(sample, device))
    return out


def _to(obj, device):
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj.to(device) if torch.is_tensor(obj) else obj


def write_dict(data_dir, vocab):
    with open(os.path.join(data_dir, "dict.src.txt"), "w") as f:
        f.writelines(f"w{i} 1\n" for i in range(vocab - 4))  # fairseq adds <s> <pad> </s> <unk>
    os.link(os.path.join(data_dir, "dict.src.txt"), os.path.join(data_dir, "dict.tgt.txt"))


def step_parser(description, sentences, top):
    """The options both step benchmarks take: configurations, batch shape, vocabulary, output."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, help="NAME:FLAGS; the first is the baseline")
    p.add_argument("--sentences", type=int, default=sentences)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--top", type=int, default=top)
    p.add_argument("--out")
    return p


def for_each_config(args, measure, summary=None):
    """[measure(name, flags, data_dir)] over --config, in a temporary data dir of a --vocab dictionary;
    summary(row), if given, is printed to stderr after each."""
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        write_dict(data_dir, args.vocab)
        for spec in args.config:
            name, _, flags = spec.partition(":")
            rows.append(measure(name, flags, data_dir))
            if summary:
                print(f"{name}: {summary(rows[-1])}", file=sys.stderr, flush=True)
    return rows


def in_turns(timers, rounds) -> List[List[float]]:
    """[each timer's result in each of ``rounds`` rounds], the timers taking turns within a round: drift (clocks,
    other processes, the allocator, Python's garbage) falls on all of them alike instead of on whichever ran last,
    as one pass per configuration would let it. Both step profilers time their configurations this way."""
    results = [[] for _ in timers]
    for _ in range(rounds):
        for times, timer in zip(results, timers):
            times.append(timer())
    return results
