"""Where a beam-search decoding step's time goes, at short and long outputs: device time against wall time.

Each configuration is built with fairseq's code (as in profile_training_step.py), in fp16 on a GPU, encodes
--sentences x --beam hypotheses of --source-tokens random words, and decodes incrementally as fairseq-generate
does: the decoder on the last token with fairseq's incremental state, log-softmax over the vocabulary, and the
cache reordered by a beam permutation after every step. Up to each --length it times --steps steps without the
profiler (wall time, one synchronisation at the end), then profiles the next --steps: device time per step split
into kernel groups, and the ops that differ most from the first configuration. Wall time well above device time
means the GPU waits for the host (launches, Python), where kernel work cannot explain a speed ratio.
On a machine without CUDA it profiles the CPU in fp32 (a smoke run, not a measurement).

    python benchmarks/profile_decode_step.py --vocab 8000 --length 30 --length 200 \\
        --out results/performance/profile_decode_h100.json \\
        --config "transformer_wmt_en_de:--arch transformer_wmt_en_de" \\
        --config "collab_dk128:--arch transformer_collab_wmt_en_de --collab-key-dim 128"
"""

import json

import torch
from profile_training_step import GROUPS, batches, build, for_each_config, op_differences, profiled_steps, step_parser


def profile_config(name, flags, data_dir, args, device):
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
    row = {"config": name, "flags": flags, "params": sum(p.numel() for p in model.parameters()), "lengths": []}
    with torch.no_grad():
        encoder_out = model.encoder(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"])
        for length in args.length:
            state = {}
            tokens = torch.full((hypotheses, 1), task.target_dictionary.eos(), device=device)

            def step(_=None):
                nonlocal tokens
                logits = model.decoder(tokens, encoder_out=encoder_out, incremental_state=state)
                model.get_normalized_probs(logits, log_probs=True)
                model.decoder.reorder_incremental_state_scripting(state, order)
                tokens = torch.cat([tokens, torch.randint(4, args.vocab, (hypotheses, 1), device=device)], 1)

            for _ in range(max(length - 2 * args.steps, 0)):
                step()
            row["lengths"].append({"length": length, **profiled_steps(step, range(args.steps), device, args.top)})
    return row


def main():
    p = step_parser(__doc__, sentences=128, top=12)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--source-tokens", type=int, default=15, help="source sentence length (Multi30k: ~13)")
    p.add_argument("--length", type=int, action="append", help="profile the steps that end at this target length")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    args.length = args.length or [30, 200]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = for_each_config(
        args,
        lambda name, flags, data_dir: profile_config(name, flags, data_dir, args, device),
        lambda row: ", ".join(
            f"L={s['length']}: {s['ms_per_step']:.2f} device / {s['wall_ms_per_step']:.2f} wall ms/step"
            for s in row["lengths"]
        ),
    )
    if args.out:
        with open(args.out, "w") as f:
            device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
            meta = {"device": device_name, "torch": torch.__version__, "sentences": args.sentences}
            meta.update(beam=args.beam, source_tokens=args.source_tokens, vocab=args.vocab, steps=args.steps)
            json.dump({**meta, "rows": rows}, f, indent=1)
    names = [g for g, _ in GROUPS] + ["other"]
    print(f"{args.sentences} sentences x beam {args.beam}, source {args.source_tokens} tokens; ms per step")
    print(f"| L | config | device ms | vs baseline | wall ms | vs baseline | {' | '.join(names)} |")
    print("|---" * (len(names) + 6) + "|")
    for length in args.length:
        base = next(s for s in rows[0]["lengths"] if s["length"] == length)
        for r in rows:
            s = next(s for s in r["lengths"] if s["length"] == length)
            cells = " | ".join(f"{s['groups_ms'].get(g, 0.0):.2f}" for g in names)
            print(
                f"| {length} | {r['config']} | {s['ms_per_step']:.2f} | {s['ms_per_step'] / base['ms_per_step']:.3f} "
                f"| {s['wall_ms_per_step']:.2f} | {s['wall_ms_per_step'] / base['wall_ms_per_step']:.3f} | {cells} |"
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
