#!/bin/bash
# Session 16: does multi-turn data raise tau? The shipped SmolLM2 draft was trained on single-turn answers only;
# on MT-Bench's second turns the base copies much of its first answer (HF prompt lookup: tau 3.45 on turn 2,
# 1.33 on turn 1) while the draft alone gets 1.77 (runs/s14/bench_peers_mtbench10.json).
# 1. gen_followups: SmolLM2 writes a second user turn for answered breadth conversations (first answer ended on
#    its own within 384 tokens): 250 of the first 768 (a), 150 of part B (b); 150 of part D get a generic request
#    that reworks the answer instead (c, --requests shipped). Never MT-Bench / GSM8K test / held-out (overlap filter).
# 2. gen_dataset: the base answers both turns (float32 here, <= 512 new tokens per turn).
# 3. add_features, then the shipped draft trained on for one epoch over them (7 unroll steps, lr 3e-4).
# Every step resumes when rerun. Bench: bench_multiturn.sh.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
set -e
P=runs/prompts
[ -f $P/smollm2_followups_a.jsonl ] || $PY -m specforge_het.data_gen gen_followups $P/smollm2_followups_a.jsonl \
  runs/data/smollm2_big --@smollm2 --n ${NA:-250} --batch_size 32 --max_answer_tokens 384 --seed 0
[ -f $P/smollm2_followups_b.jsonl ] || $PY -m specforge_het.data_gen gen_followups $P/smollm2_followups_b.jsonl \
  runs/data/smollm2_big_b --@smollm2 --n ${NB:-150} --batch_size 32 --max_answer_tokens 384 --seed 0
# c: generic requests that rework the answer (files/followup_requests.json), for conversations of part D
[ -f $P/smollm2_followups_c.jsonl ] || $PY -m specforge_het.data_gen gen_followups $P/smollm2_followups_c.jsonl \
  runs/data/smollm2_big_d --@smollm2 --n ${NC:-150} --max_answer_tokens 384 --seed 0 --requests shipped
[ -f $P/smollm2_followups.jsonl ] || $PY -m specforge_het.data_gen mix_prompts $P/smollm2_followups.jsonl \
  $P/smollm2_followups_a.jsonl $P/smollm2_followups_b.jsonl $P/smollm2_followups_c.jsonl --seed 0
D=runs/data/smollm2_mt
$PY -m specforge_het.data_gen gen_dataset $P/smollm2_followups.jsonl --@smollm2 --dataset_generation.output_dir $D \
  --dataset_generation.max_new_tokens 512 --dataset_generation.batch_size 64
$PY -m specforge_het.data_gen add_features $D --@smollm2 --@eagle_v3
O=runs/smollm2_eagle3_mt
[ -f $O/model.safetensors ] || $PY -m specforge_het.train --@smollm2 --@eagle_v3 --training.mode offline \
  --dataset.path $D --modeling.init_draft specforge_het/drafts/smollm2-135m-instruct-eagle3 \
  --training.ttt_steps 7 --training.per_device_batch_size 2 --training.learning_rate 3e-4 --training.warmup_ratio 0.02 \
  --training.num_epochs 1 --dataset.max_length 2048 --dataset.eval_fraction 0.03 \
  --training.logging_steps 10 --training.eval_steps 100 --training.save_steps 40 --training.save_total_limit 2 \
  --training.output_dir $O $(ls -d $O/checkpoint-* >/dev/null 2>&1 && echo --training.resume_from_checkpoint last)
echo ALL DONE
