#!/usr/bin/env bash
# The "earn the paper's claim" ablations on Multi30k (results/collab_quality/README.md): each NAME below is one
# training configuration; every NAME:SEED runs train.sh + evaluate.sh into
# work/multi30k_en_de/ablations/<heads>_dk<D_k>_<NAME>_s<SEED> (make_table groups them by NAME).
# Runs go PARALLEL at a time (small models: ~10 fit side by side on one H100/H200); SWEEP_GPUS="0 1 2 3" spreads
# them over a machine's GPUs, one GPU per run, round robin (see recipes/lib/sweep.sh).
#
# (collab rows without WARM_START=... train from scratch; the recipe's default is the warm start)
# usage: PARALLEL=10 recipes/multi30k_en_de/ablations.sh frozen_mixing:1 frozen_mixing:2 warm_start600:1 ...
#        recipes/multi30k_en_de/ablations.sh --list
set -euo pipefail
declare -A CONFIG=(  # NAME -> "HEADS KEY_DIM | environment for train.sh"
  [transformer]="transformer 512 |"
  [concat128]="concat 128 |"
  [collab128]="collab 128 | WARM_START="
  [collab128_fp32]="collab 128 | WARM_START= FP16=0"
  [frozen_mixing]="collab 128 | WARM_START= EXTRA=--collab-mixing-lr-scale=0"
  [mixing_lr0.1]="collab 128 | WARM_START= EXTRA=--collab-mixing-lr-scale=0.1"
  [no_content_bias]="collab 128 | WARM_START= EXTRA=--collab-no-content-bias"
  [normal_mixing]="collab 128 | WARM_START= MIXING_INIT=normal"
  [self_attention_only]="collab 128 | WARM_START= ATTENTIONS=encoder_self,decoder_self"
  [cross_attention_only]="collab 128 | WARM_START= ATTENTIONS=encoder_decoder"
  [warm_start300]="collab 128 | WARM_START=300"
  [warm_start600]="collab 128 | WARM_START=600"
  [warm_start900]="collab 128 | WARM_START=900"
  [collab64_warm_start600]="collab 64 | WARM_START=600"
  # training length: 2x and 4x the 1800-update budget; 4x stops earlier once 10 validations in a row (epochs,
  # ~70 updates each) bring no better validation loss (to convergence). Warm starts keep their 600 updates.
  [transformer_u3600]="transformer 512 | MAX_UPDATE=3600"
  [collab128_u3600]="collab 128 | WARM_START= MAX_UPDATE=3600"
  [warm_start600_u3600]="collab 128 | WARM_START=600 MAX_UPDATE=3600"
  [concat128_u3600]="concat 128 | MAX_UPDATE=3600"
  [transformer_u7200]="transformer 512 | MAX_UPDATE=7200 PATIENCE=10"
  [collab128_u7200]="collab 128 | WARM_START= MAX_UPDATE=7200 PATIENCE=10"
  [warm_start600_u7200]="collab 128 | WARM_START=600 MAX_UPDATE=7200 PATIENCE=10"
  [concat128_u7200]="concat 128 | MAX_UPDATE=7200 PATIENCE=10"
)
if [[ "${1:-}" == --list || $# -eq 0 ]]; then
  for name in "${!CONFIG[@]}"; do echo "$name: ${CONFIG[$name]}"; done | sort; exit 0
fi
RECIPE_DIR="$(cd "$(dirname "$0")" && pwd)"
export RUNS_DIR="${RUNS_DIR:-work/multi30k_en_de/ablations}" RECIPE_DIR
for entry in "$@"; do
  [[ "$entry" =~ ^([A-Za-z0-9_.]+):([0-9]+)$ && -n "${CONFIG[${BASH_REMATCH[1]}]:-}" ]] || {
    echo "error: '$entry' is not NAME:SEED with a NAME from --list" >&2; exit 2; }
done
run_one() {  # INDEX NAME:SEED "HEADS KEY_DIM | VAR=value ..."
  local index="$1" name="${2%%:*}" seed="${2##*:}" spec="$3"
  read -r heads key_dim <<<"${spec%%|*}"
  (
    if [[ -n "${SWEEP_GPUS:-}" ]]; then  # this run's GPU: the inner one-entry sweep gets just that one
      read -r -a gpus <<<"$SWEEP_GPUS"; export SWEEP_GPUS="${gpus[$(( (index - 1) % ${#gpus[@]} ))]}"
    fi
    for assignment in ${spec#*|}; do export "${assignment%%=*}=${assignment#*=}"; done
    PARALLEL=1 TAG="_$name" TABLE="" PLOT="" "$RECIPE_DIR/sweep.sh" "$heads:$key_dim:$seed"
  )
}
export -f run_one
for entry in "$@"; do printf '%s\t%s\n' "$entry" "${CONFIG[${entry%%:*}]}"; done | nl -w1 -s$'\t' |
  xargs -P "${PARALLEL:-1}" -d '\n' -I{} bash -c 'IFS=$'"'"'\t'"'"' read -r i e s <<<"$1"; run_one "$i" "$e" "$s"' _ {}
