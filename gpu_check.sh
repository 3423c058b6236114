#!/usr/bin/env bash
# Every GPU check of the speed work in one call of at most 10 minutes (the step limits add up to 560 s), for a
# session lent a GPU for a short while:
#   bash gpu_check.sh [OUT_FOLDER]          (default: $OUT, else ./gpu_check_out)
# Each step is bounded by `timeout` and logs to OUT/<step>.log; OUT/summary.txt gathers the lines that matter.
# Needs torch with CUDA, tokenizers, sacrebleu and tqdm (the builtin corpus and --wandb_mode disabled need neither
# datasets nor wandb).
set -u
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
export WANDB_MODE=disabled WANDB_ERROR_REPORTING=false TOKENIZERS_PARALLELISM=false
folder=$(mktemp -d)
summary="$out/summary.txt"
: > "$summary"

step() {  # step NAME SECONDS COMMAND...: run, time, keep the log, note the exit code
  local name=$1 limit=$2; shift 2
  local started=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local code=$?
  echo "== $name: exit $code in $(( $(date +%s) - started )) s (limit $limit s)" >> "$summary"
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } >> "$summary" 2>&1

# 1. The quick start on one GPU, end to end (4 epochs, validations, test scoring): goal <= 60 s.
step quickstart 120 torchrun --standalone --nproc_per_node=1 train.py --model_folder "$folder/quick" \
    --wandb_mode disabled
grep -E "compiled|^step [0-9]+(/[0-9]+)? \| loss|BLEU|^test|done" "$out/quickstart.log" | tail -12 >> "$summary"
# 2. The same command again: it resumes and has nothing left to train.
step resume 40 torchrun --standalone --nproc_per_node=1 train.py --model_folder "$folder/quick" --wandb_mode disabled
grep -E "resumed|done" "$out/resume.log" >> "$summary"
# 3. translate.py on the GPU: beam 4 over the test split.
step translate 40 python translate.py --model_folder "$folder/quick" --evaluate
tail -2 "$out/translate.log" >> "$summary"
# 4. FSDP in bf16 on one GPU against DDP's step time (goal: within 1.5x).
step fsdp 60 torchrun --standalone --nproc_per_node=1 train.py --strategy fsdp --max_steps 300 --log_every 50 \
    --eval_every 100000 --model_folder "$folder/fsdp" --wandb_mode disabled
grep -E "compiled|^step [0-9]+(/[0-9]+)? \| loss|ms/step" "$out/fsdp.log" | tail -4 >> "$summary"
# 5. fp16 with a GradScaler (the P4000/V100 path) and an overflow forced at step 30: that step is skipped, the
#    loss scale halved, and training goes on ("done: 60 steps, 1 skipped", finite losses after step 30).
step fp16 40 env TRAINER_TEST_OVERFLOW_AT_STEP=30 torchrun --standalone --nproc_per_node=1 train.py \
    --precision fp16 --max_steps 60 --log_every 20 --eval_every 100000 --model_folder "$folder/fp16" \
    --wandb_mode disabled
grep -E "^step|skipped|^done" "$out/fp16.log" | tail -6 >> "$summary"
# 6. FSDP with --cpu_offload: gradient clipping all-reduces CPU shards, through the gloo half of the
#    cpu:gloo,cuda:nccl group (with NCCL alone: "No backend type associated with device type cpu").
step offload 40 torchrun --standalone --nproc_per_node=1 train.py --strategy fsdp --cpu_offload --max_steps 20 \
    --log_every 10 --eval_every 100000 --model_folder "$folder/offload" --wandb_mode disabled
grep -E "^step|Error|^done" "$out/offload.log" | tail -4 >> "$summary"
# 7. The benchmark: base preset, compile on, compilation reported apart from step time; goal <= 4 minutes.
step bench 120 python bench.py --preset base --max_tokens 16384 --steps 30 --skip_ddp --json "$out/bench.json"
grep -vE "^\[" "$out/bench.log" | tail -16 >> "$summary"
# 8. Resume memory (docs/multi-node.md): a 177M-parameter model trains one step and saves; a second run resumes
#    it and trains one more. The metrics lines' peak GPU memory of the two runs: a resume that loads more than
#    one tensor at a time onto the GPU shows as a higher peak in the second.
big=(--d_model 1024 --num_layers 6 --num_heads 8 --d_ff 4096 --no-compile --log_every 1 --save_every 1
     --eval_every 100000 --valid_size 20 --test_size 20 --beam_size 1 --model_folder "$folder/big" --wandb_mode disabled)
step big_fresh 50 torchrun --standalone --nproc_per_node=1 train.py "${big[@]}" --max_steps 1
step big_resumed 50 torchrun --standalone --nproc_per_node=1 train.py "${big[@]}" --max_steps 2
grep -hE "parameters|resumed|peak mem" "$out/big_fresh.log" "$out/big_resumed.log" >> "$summary"
rm -rf "$folder"
cat "$summary"
