#!/usr/bin/env bash
# Every Multi30k number of results/ from the code that ships, on one machine, then the tables:
#   length     2x and 4x the 1800-update budget (4x to convergence): transformer, from scratch, warm start (LENGTH_SEEDS)
#   grid       transformer, and concat / collab at D_k 512 256 128 64 from scratch and with the warm start (SEEDS)
#   ablations  what chose the default: mixing lr / frozen / init, content bias, which attentions, warm-start length
#   reparam    re-parametrize the 4x transformer (seed 1) down to D_k = 4, per-layer error targets, uniform attention
# All trainings form one queue (in the order above: the longest first), PARALLEL at a time; SWEEP_GPUS="0 1 2 3"
# gives each run one GPU, round robin. reparam starts as soon as its source is scored. Runs already scored
# (bleu.json) are skipped, so re-running resumes. ~75 Multi30k trainings: one 4-GPU machine takes ~25 min.
#
# usage: SWEEP_GPUS="0 1 2 3" recipes/multi30k_en_de/reproduce.sh [length] [grid] [ablations] [reparam]  (default: all)
#   env: RUNS_ROOT (work/multi30k_en_de), PARALLEL (36), SEEDS ("1 2 3"), LENGTH_SEEDS ("1 2"), DRY_RUN=1 (list runs)
set -euo pipefail
RECIPE_DIR="$(cd "$(dirname "$0")" && pwd)"
RUNS_ROOT="${RUNS_ROOT:-work/multi30k_en_de}"
PHASES=("$@"); [[ ${#PHASES[@]} -gt 0 ]] || PHASES=(length grid ablations reparam)
for p in "${PHASES[@]}"; do
  [[ "$p" =~ ^(grid|ablations|length|reparam)$ ]] || { echo "error: unknown phase '$p' (length, grid, ablations, reparam)" >&2; exit 2; }
done
has() { [[ " ${PHASES[*]} " == *" $1 "* ]]; }
read -r -a SEED_LIST <<<"${SEEDS:-1 2 3}"
read -r -a LENGTH_SEED_LIST <<<"${LENGTH_SEEDS:-1 2}"
export RECIPE_DIR RUNS_ROOT DRY_RUN="${DRY_RUN:-0}"

jobs=()  # "RUNS_SUBDIR WARM_START SCRIPT ENTRY"  (WARM_START "-": from scratch)
if has length; then
  for name in transformer_u7200 collab128_u7200 warm_start600_u7200 transformer_u3600 collab128_u3600 warm_start600_u3600; do
    for s in "${LENGTH_SEED_LIST[@]}"; do jobs+=("length - ablations.sh $name:$s"); done
  done
fi
for s in "${SEED_LIST[@]}"; do
  if has grid; then
    jobs+=("runs - sweep.sh transformer:512:$s")
    for d in 512 256 128 64; do jobs+=("runs - sweep.sh concat:$d:$s" "runs - sweep.sh collab:$d:$s" "runs 600 sweep.sh collab:$d:$s"); done
  fi
  if has ablations; then
    for name in frozen_mixing mixing_lr0.1 no_content_bias normal_mixing self_attention_only cross_attention_only \
                warm_start300 warm_start900; do
      jobs+=("ablations - ablations.sh $name:$s")
    done
  fi
done

run_job() {  # INDEX "RUNS_SUBDIR WARM_START SCRIPT ENTRY": one training + evaluation on its GPU
  local index="$1" subdir warm script entry
  read -r subdir warm script entry <<<"$2"
  if [[ -n "${SWEEP_GPUS:-}" ]]; then
    local gpus; read -r -a gpus <<<"$SWEEP_GPUS"
    export SWEEP_GPUS="${gpus[$(( (index - 1) % ${#gpus[@]} ))]}"
  fi
  [[ "$warm" == - ]] && warm=""
  RUNS_DIR="$RUNS_ROOT/$subdir" WARM_START="$warm" PARALLEL=1 TABLE="" PLOT="" "$RECIPE_DIR/$script" "$entry" || true
}
export -f run_job
printf '%s\n' "${jobs[@]}" | nl -w1 -s$'\t' | xargs -P "${PARALLEL:-36}" -d '\n' -I{} \
  bash -c 'IFS=$'"'"'\t'"'"' read -r i job <<<"$1"; run_job "$i" "$job"' _ {} &
queue=$!

if has reparam && [[ "$DRY_RUN" != 1 ]]; then
  source_run="$RUNS_ROOT/length/transformer_dk512_transformer_u7200_s1"
  until [[ -s "$source_run/bleu.json" ]] || ! kill -0 "$queue" 2>/dev/null; do sleep 15; done
  if [[ -s "$source_run/bleu.json" ]]; then
    SOURCE="$source_run" OUT_DIR="$RUNS_ROOT/reparam" KEY_DIMS="512 128 64 32 16 8 4" FINETUNE_DIMS="" \
      MAX_ERRORS="0.5 0.7 0.9" UNIFORM="encoder_decoder all" "$RECIPE_DIR/reparametrize.sh" || true
  else
    echo "error: $source_run was not trained (see its train.log): no re-parametrization" >&2
  fi
fi
wait "$queue"
[[ "$DRY_RUN" == 1 ]] && exit 0
for dir in runs ablations length reparam; do
  [[ -d "$RUNS_ROOT/$dir" ]] || continue
  python3 -m collab_fairseq.cli.make_table "$RUNS_ROOT/$dir" --out "$RUNS_ROOT/${dir}_table.md" || true
done
