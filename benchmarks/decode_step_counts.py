"""What one beam-search decoding step costs by count: FLOPs, operator launches, cached key/value bytes.

Device-independent companion of beam_search.py: each configuration is built with fairseq's code (as in
profile_training_step.py), encodes --sentences random sentences of --source-tokens, and decodes
incrementally (fairseq's incremental_state, as fairseq-generate does) up to each --length; the last step is
counted: FLOPs (torch.utils.flop_counter), operators dispatched (views excluded; on a GPU about one kernel
launch each), alone and with the cache reorder fairseq's beam search runs after every step, and the bytes
of self-attention keys/values that step reads from the cache (fp16, per hypothesis). Run on the CPU in fp32
inference mode; counts per hypothesis.

    python benchmarks/decode_step_counts.py --vocab 8000 --length 30 --length 200 \\
        --config "transformer_wmt_en_de:--arch transformer_wmt_en_de" \\
        --config "collab_dk128:--arch transformer_collab_wmt_en_de --collab-key-dim 128"
"""

import json

import torch
from model_steps import batches, build, for_each_config, step_parser
from step_flops import OperatorCounter, count_flops

SELF_ATTENTION_CACHE = ("prev_key", "prev_value", "prev_content_bias")


def self_attention_cache_bytes(model, incremental_state, hypotheses):
    """fp16 bytes per hypothesis of the decoder self-attention caches (keys, values, content bias)."""
    values = 0
    for layer in model.decoder.layers:
        state = layer.self_attn._get_input_buffer(incremental_state) or {}
        values += sum(state[k].numel() for k in SELF_ATTENTION_CACHE if state.get(k) is not None)
    return 2 * values / hypotheses


def count_config(name, flags, data_dir, args):
    model, _, task = build(flags, data_dir)
    model.eval()
    (sample,) = batches(task, 1, args.sentences, args.source_tokens, torch.device("cpu"), padded=False)
    gen = torch.Generator().manual_seed(0)
    row = {"config": name, "flags": flags, "params": sum(p.numel() for p in model.parameters()), "steps": []}
    with torch.no_grad():
        encoder_out = model.encoder(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"])
        for length in args.length:
            state = {}
            tokens = torch.full((args.sentences, 1), task.target_dictionary.eos())

            def decode():
                return model.decoder(tokens, encoder_out=encoder_out, incremental_state=state)

            for _ in range(length - 1):
                decode()
                tokens = torch.cat([tokens, torch.randint(4, args.vocab, (args.sentences, 1), generator=gen)], 1)
            cache = self_attention_cache_bytes(model, state, args.sentences)  # what the last step reads
            before = {k: dict(v) for k, v in state.items()}
            flops = sum(count_flops(decode)["Global"].values())
            state.clear()
            state.update({k: dict(v) for k, v in before.items()})  # count the same step again
            with OperatorCounter() as ops:
                decode()
            with OperatorCounter() as reorder_ops:  # what fairseq's beam search adds to every step
                model.decoder.reorder_incremental_state_scripting(state, torch.arange(args.sentences))
            row["steps"].append(
                {
                    "length": length,
                    "flops_per_hypothesis": flops / args.sentences,
                    "operators": sum(ops.counts.values()),
                    "reorder_operators": sum(reorder_ops.counts.values()),
                    "cache_bytes_per_hypothesis": cache,
                    "top_operators": ops.counts.most_common(args.top),
                }
            )
    return row


def main():
    p = step_parser(__doc__, sentences=8, top=10)
    p.add_argument("--source-tokens", type=int, default=15, help="source sentence length (Multi30k: ~13)")
    p.add_argument("--length", type=int, action="append", help="count the step at this target length")
    args = p.parse_args()
    args.length = args.length or [30, 200]
    torch.manual_seed(0)
    rows = for_each_config(
        args,
        lambda name, flags, data_dir: count_config(name, flags, data_dir, args),
        lambda row: ", ".join(f"step {s['length']}: {s['operators']} operators" for s in row["steps"]),
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "torch": torch.__version__,
                    "hypotheses": args.sentences,
                    "source_tokens": args.source_tokens,
                    "vocab": args.vocab,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    base = {s["length"]: s for s in rows[0]["steps"]}
    print(
        f"one incremental decoding step at target length L, source {args.source_tokens} tokens, "
        f"vocabulary {args.vocab}; per hypothesis"
    )
    print(
        "| L | config | MFLOP | vs baseline | operators | vs baseline | + beam reorder | vs baseline "
        "| self-attention cache KB (fp16) | vs baseline |"
    )
    print("|---" * 10 + "|")
    for length in args.length:
        for r in rows:
            s = next(s for s in r["steps"] if s["length"] == length)
            b = base[length]
            print(
                f"| {length} | {r['config']} | {s['flops_per_hypothesis'] / 1e6:.2f} "
                f"| {s['flops_per_hypothesis'] / b['flops_per_hypothesis']:.3f} | {s['operators']} "
                f"| {s['operators'] / b['operators']:.2f} | {s['operators'] + s['reorder_operators']} "
                f"| {(s['operators'] + s['reorder_operators']) / (b['operators'] + b['reorder_operators']):.2f} "
                f"| {s['cache_bytes_per_hypothesis'] / 1e3:.1f} "
                f"| {s['cache_bytes_per_hypothesis'] / b['cache_bytes_per_hypothesis']:.3f} |"
            )


if __name__ == "__main__":
    main()
