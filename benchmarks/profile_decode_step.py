"""Where a beam-search decoding step's time goes, at short and long outputs: device time against wall time.

Each configuration is built with fairseq's code (as in profile_training_step.py), in fp16 on a GPU, encodes
--sentences x --beam hypotheses of --source-tokens random words, and decodes incrementally as fairseq-generate
does: the decoder on the last token with fairseq's incremental state, log-softmax over the vocabulary, and the
cache reordered by a beam permutation after every step. Every configuration decodes up to --length minus --steps;
the --steps steps that end at --length are timed without the profiler (wall time, one synchronisation at the end)
in --wall-rounds rounds in which the configurations take turns, each round starting from the same cache (kept and
brought back), then profiled: device time per step split into kernel groups, and the ops that differ most from
the first configuration. Wall time well above device time means the GPU waits for the host (launches, Python),
where kernel work cannot explain a speed ratio.
On a machine without CUDA it profiles the CPU in fp32 (a smoke run, not a measurement).

    python benchmarks/profile_decode_step.py --vocab 8000 --length 30 --length 200 \\
        --out results/performance/profile_decode_h100.json \\
        --config "transformer_wmt_en_de:--arch transformer_wmt_en_de" \\
        --config "collab_dk128:--arch transformer_collab_wmt_en_de --collab-key-dim 128"
"""

import copy
import json
import statistics
import sys

import torch
from model_steps import batches, build, for_each_config, in_turns, step_parser
from profile_training_step import GROUPS, op_differences, profiled_steps, wall_ms_per_step, wall_ratios

from collab_fairseq.attention_backends import default_cudnn_attention


def prepare_config(name, flags, data_dir, args, device):
    """(row, model, encoder_out, order, hypotheses, eos): the model built (fp16 on a GPU), its encoder run once."""
    model, _, task = build(flags, data_dir)
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.half()
    hypotheses = args.sentences * args.beam
    (sample,) = batches(task, 1, hypotheses, args.source_tokens, device)
    gen = torch.Generator().manual_seed(0)
    # the beam search's reorder: each sentence's hypotheses permuted among themselves
    beams = torch.arange(hypotheses).view(args.sentences, args.beam)
    order = beams.gather(1, torch.randint(0, args.beam, beams.shape, generator=gen)).view(-1).to(device)
    with torch.no_grad():
        encoder_out = model.encoder(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"])
    row = {"config": name, "flags": flags, "params": sum(p.numel() for p in model.parameters()), "lengths": []}
    return row, model, encoder_out, order, hypotheses, task.target_dictionary.eos()


class Decoding:
    """One configuration's incremental decoding: ``step()`` decodes one token for every hypothesis (decoder on the
    last token, log-softmax, the beam reorder), ``snapshot()`` / ``restore()`` keep and bring back the cache, so
    that every timing round starts from the same length."""

    def __init__(self, model, encoder_out, order, hypotheses, eos, vocab, device):
        self.model, self.encoder_out, self.order, self.vocab = model, encoder_out, order, vocab
        self.state = {}
        self.tokens = torch.full((hypotheses, 1), eos, device=device)
        self.kept = None

    def step(self, _=None):
        with torch.no_grad():
            logits = self.model.decoder(self.tokens, encoder_out=self.encoder_out, incremental_state=self.state)
            self.model.get_normalized_probs(logits, log_probs=True)
            self.model.decoder.reorder_incremental_state_scripting(self.state, self.order)
            new = torch.randint(4, self.vocab, (self.tokens.size(0), 1), device=self.tokens.device)
            self.tokens = torch.cat([self.tokens, new], 1)

    def snapshot(self):
        self.kept = copy.deepcopy((self.state, self.tokens))

    def restore(self):
        self.state, self.tokens = copy.deepcopy(self.kept)


def measure_length(prepared, length, args, device):
    """For every configuration: decode up to ``length - steps``, then time the ``steps`` steps that end at
    ``length`` in --wall-rounds interleaved rounds (the cache brought back before each), then profile them."""
    decodings = []
    for row, model, encoder_out, order, hypotheses, eos in prepared:
        decoding = Decoding(model, encoder_out, order, hypotheses, eos, args.vocab, device)
        for _ in range(max(length - args.steps, 0)):
            decoding.step()
        decoding.snapshot()
        decodings.append(decoding)

    def timer(decoding):
        def wall():
            decoding.restore()
            return wall_ms_per_step(decoding.step, range(args.steps), device)

        return wall

    walls = in_turns([timer(decoding) for decoding in decodings], args.wall_rounds)
    for (row, *_), decoding, wall in zip(prepared, decodings, walls):
        decoding.restore()
        row["lengths"].append(
            {"length": length, **profiled_steps(decoding.step, range(args.steps), device, args.top, wall)}
        )


def main():
    default_cudnn_attention("0")  # measured with cuDNN's attention off, as the recipes train
    p = step_parser(__doc__, sentences=128, top=12)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--source-tokens", type=int, default=15, help="source sentence length (Multi30k: ~13)")
    p.add_argument("--length", type=int, action="append", help="profile the steps that end at this target length")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument(
        "--wall-rounds", type=int, default=5, help="rounds of unprofiled wall timing, the configurations taking turns"
    )
    args = p.parse_args()
    args.length = args.length or [30, 200]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prepared = for_each_config(args, lambda name, flags, data_dir: prepare_config(name, flags, data_dir, args, device))
    for length in args.length:
        measure_length(prepared, length, args, device)
    rows = [row for row, *_ in prepared]
    for row in rows:
        summary = ", ".join(
            f"L={s['length']}: {s['ms_per_step']:.2f} device / {s['wall_ms_per_step']:.2f} wall ms/step"
            for s in row["lengths"]
        )
        print(f"{row['config']}: {summary}", file=sys.stderr, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
            meta = {"device": device_name, "torch": torch.__version__, "sentences": args.sentences}
            meta.update(beam=args.beam, source_tokens=args.source_tokens, vocab=args.vocab, steps=args.steps)
            meta.update(wall_rounds=args.wall_rounds)
            json.dump({**meta, "rows": rows}, f, indent=1)
    names = [g for g, _ in GROUPS] + ["other"]
    print(f"{args.sentences} sentences x beam {args.beam}, source {args.source_tokens} tokens; ms per step")
    print(f"wall: median over {args.wall_rounds} rounds; vs baseline: median (range) of the per-round ratios")
    print(f"| L | config | device ms | vs baseline | wall ms | vs baseline | {' | '.join(names)} |")
    print("|---" * (len(names) + 6) + "|")
    for length in args.length:
        base = next(s for s in rows[0]["lengths"] if s["length"] == length)
        for r in rows:
            s = next(s for s in r["lengths"] if s["length"] == length)
            cells = " | ".join(f"{s['groups_ms'].get(g, 0.0):.2f}" for g in names)
            ratios = wall_ratios(s, base)
            wall = f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
            print(
                f"| {length} | {r['config']} | {s['ms_per_step']:.2f} | {s['ms_per_step'] / base['ms_per_step']:.3f} "
                f"| {s['wall_ms_per_step']:.2f} | {wall} | {cells} |"
            )
    for length in args.length:
        base = next(s for s in rows[0]["lengths"] if s["length"] == length)
        for r in rows[1:]:
            s = next(s for s in r["lengths"] if s["length"] == length)
            print(f"\nL={length}, {r['config']} against {rows[0]['config']}: ops whose device time differs most")
            for op, ours, theirs in op_differences(s["ops_ms"], base["ops_ms"])[: args.top]:
                print(f"  {ours - theirs:+8.3f}  ({ours:.3f} vs {theirs:.3f})  {op[:90]}")


if __name__ == "__main__":
    main()
