# Breadth data for the next SmolLM2 draft (issue 13): SmolLM2 writes its own prompts (Magpie-style,
# filtered, deduplicated, evaluation sets kept out), mixed with the shipped training prompts; the base
# answers with up to 1024 new tokens per turn through continuous batching. Every step resumes when rerun.
.PHONY: prompts-smollm2 data-smollm2-big
# MAGPIE_N: prompts kept (a rerun with a larger N resumes from the completions made so far and adds more;
# the first N stay the same). The first draft run used 1450; ~6000 are planned for 2M answer tokens.
MAGPIE_N ?= 1450
runs/prompts/smollm2_magpie.jsonl: | setup
	$(BIN)/python -m specforge_het.data_gen gen_prompts $@ --@smollm2 --n $(MAGPIE_N) --seed 0 --batch_size 64
runs/prompts/smollm2_mix.jsonl: runs/prompts/smollm2_magpie.jsonl
	$(BIN)/python -m specforge_het.data_gen mix_prompts $@ runs/prompts/smollm2_magpie.jsonl train_prompts --seed 0
prompts-smollm2: runs/prompts/smollm2_mix.jsonl
data-smollm2-big: runs/prompts/smollm2_mix.jsonl
	$(BIN)/python -m specforge_het.data_gen gen_dataset runs/prompts/smollm2_mix.jsonl --@smollm2 \
		--dataset_generation.output_dir runs/data/smollm2_big

# Breadth data, stage 1: the conversations answered so far (768), merged into a training folder,
# then base features stored once (`add_features`, one base pass) so that every run trains offline:
# on this CPU the base's forward is ~3/4 of an online training step.
BIG := runs/data/smollm2_big_768
$(BIG)/meta.json: | setup
	$(BIN)/python -m specforge_het.data_gen merge_datasets $(BIG) runs/data/smollm2_big --allow_gaps
.PHONY: features-smollm2-big draft-smollm2-eagle3-big scaling-smollm2 scaling-smollm2-warm
features-smollm2-big: $(BIG)/meta.json
	$(BIN)/python -m specforge_het.data_gen add_features $(BIG) --@smollm2 --@eagle_v3

# The SmolLM2 EagleV3 draft on the breadth data: a fresh draft (layer 29 of the base, rope θ
# inherited from it, 8192-row vocabulary), the full 7-step unroll, offline, one epoch, 2 conversations
# per step. A checkpoint every 24 steps (48 conversations) feeds the scaling study; a killed run resumes.
BIG_RUN := runs/smollm2_eagle3_big
TRAIN_BIG := $(BIN)/python -m specforge_het.train --@smollm2 --@eagle_v3 --training.mode offline --dataset.path $(BIG) \
	--modeling.init_from smollm2-135m-instruct --modeling.init_layers 29 --modeling.draft_vocab_size 8192 \
	--training.ttt_steps 7 --training.per_device_batch_size 2 --training.learning_rate 1e-3 \
	--training.warmup_ratio 0.02 --training.num_epochs 1 --dataset.max_length 2048 --dataset.eval_fraction 0.02 \
	--training.logging_steps 12
draft-smollm2-eagle3-big: $(BIG_RUN2)/model.safetensors
$(BIG_RUN)/model.safetensors: | features-smollm2-big
	$(TRAIN_BIG) --training.eval_steps 96 --training.save_steps 24 --training.save_total_limit 1000 \
	  --training.output_dir $(BIG_RUN) $(if $(wildcard $(BIG_RUN)/checkpoint-*),--training.resume_from_checkpoint last)

# Stage 2: 240 more steps (480 conversations: the same shuffled order again, 64 % of it) from the
# stage-1 draft, the learning-rate schedule restarted.
BIG_RUN2 := runs/smollm2_eagle3_big2
$(BIG_RUN2)/model.safetensors: $(BIG_RUN)/model.safetensors
	$(BIN)/python -m specforge_het.train --@smollm2 --@eagle_v3 --training.mode offline --dataset.path $(BIG) \
	  --modeling.init_draft $(BIG_RUN) --training.ttt_steps 7 --training.per_device_batch_size 2 --training.learning_rate 1e-3 \
	  --training.warmup_ratio 0.02 --training.num_epochs 1 --training.max_steps 240 --dataset.max_length 2048 \
	  --dataset.eval_fraction 0.02 --training.logging_steps 12 --training.eval_steps 120 --training.save_steps 120 \
	  --training.save_total_limit 1000 --training.output_dir $(BIG_RUN2) \
	  $(if $(wildcard $(BIG_RUN2)/checkpoint-*),--training.resume_from_checkpoint last)

# The breadth-data draft, warm-started (issue 13): the previous SmolLM2 draft (stage 2 of
# draft-smollm2-eagle3, runs/smollm2_eagle3_more) trained on over the breadth data in two stages, offline,
# 5 unroll steps (the tree_cpu tree is 5 deep), bfloat16 autocast where the CPU has AMX:
#   A: one epoch over the 768 conversations of $(BIG), learning rate 1e-3;
#   B: one epoch over 1,024 more conversations (prompts 768-1791 of the mix, answered in bfloat16), 7e-4.
# Then shipped as smollm2-135m-instruct-eagle3. Each step resumes where it stopped. Rebuilding WARM_INIT
# from scratch runs `make draft-smollm2-eagle3`, which ships the previous draft on its way; the last step
# here ships the breadth draft over it.
WARM_INIT ?= runs/smollm2_eagle3_more
WARM_A := runs/smollm2_eagle3_warm
WARM_B := runs/smollm2_eagle3_warm2
BIG_B := runs/data/smollm2_big_b
BIG_C := runs/data/smollm2_big_c
TRAIN_WARM = $(BIN)/python -m specforge_het.train --@smollm2 --@eagle_v3 --training.mode offline --training.ttt_steps 5 \
	--training.per_device_batch_size 2 --training.warmup_ratio 0.02 --training.num_epochs 1 --dataset.max_length 2048 \
	--dataset.eval_fraction 0.02 --training.logging_steps 12 --training.save_steps 48 --training.save_total_limit 1000 \
	$(if $(wildcard $(1)/checkpoint-*),--training.resume_from_checkpoint last) --training.output_dir $(1)
.PHONY: data-smollm2-big-b data-smollm2-big-d features-smollm2-big-c draft-smollm2-eagle3-breadth
data-smollm2-big-b: | setup
	$(BIN)/python -m specforge_het.data_gen gen_dataset runs/prompts/smollm2_mix.jsonl --@smollm2 \
		--dataset_generation.dtype bfloat16 --dataset_generation.ds_range 768,1792 --dataset_generation.output_dir $(BIG_B)
# The rest of the mix (prompts 1792-2322), for the next draft; not in the shipped one.
data-smollm2-big-d: | setup
	$(BIN)/python -m specforge_het.data_gen gen_dataset runs/prompts/smollm2_mix.jsonl --@smollm2 \
		--dataset_generation.dtype bfloat16 --dataset_generation.ds_range 1792,2323 --dataset_generation.output_dir runs/data/smollm2_big_d
$(BIG_C)/meta.json: | data-smollm2-big-b
	$(BIN)/python -m specforge_het.data_gen merge_datasets $(BIG_C) $(BIG_B) --allow_gaps
features-smollm2-big-c: $(BIG_C)/meta.json
	$(BIN)/python -m specforge_het.data_gen add_features $(BIG_C) --@smollm2 --@eagle_v3
$(WARM_A)/model.safetensors: | features-smollm2-big
	[ -f $(WARM_INIT)/model.safetensors ] || $(MAKE) draft-smollm2-eagle3
	$(call TRAIN_WARM,$(WARM_A)) --dataset.path $(BIG) --modeling.init_draft $(WARM_INIT) --training.learning_rate 1e-3 \
		--training.eval_steps 96
$(WARM_B)/model.safetensors: $(WARM_A)/model.safetensors | features-smollm2-big-c
	$(call TRAIN_WARM,$(WARM_B)) --dataset.path $(BIG_C) --modeling.init_draft $(WARM_A) --training.learning_rate 7e-4 \
		--training.eval_steps 192
draft-smollm2-eagle3-breadth: $(WARM_B)/model.safetensors
	$(BIN)/python -m specforge_het.drafts ship $(WARM_B) smollm2-135m-instruct-eagle3 --rebuild "make draft-smollm2-eagle3-breadth"

# More breadth data (part E) and stage C of the warm-started draft (issue 13, session 10):
#   1. 1,700 more Magpie prompts from SmolLM2 (seed 1, bfloat16), appended after the first mix
#      (no shuffle: rows 0-2322 stay the mix that parts A-D answered; duplicates of them are dropped);
#   2. the base answers the new rows 2323-4007 (part E) in bfloat16; features for parts D and E;
#   3. stage C: the stage-B draft trained on D + E (never seen by it), the full 7-step unroll, lr 6e-4.
# Then `draft-smollm2-eagle3-breadth-c` ships it as smollm2-135m-instruct-eagle3 (when its bench is better).
BIG_D := runs/data/smollm2_big_d
BIG_E := runs/data/smollm2_big_e
BIG_DE := runs/data/smollm2_big_de
WARM_C := runs/smollm2_eagle3_warm3
runs/prompts/smollm2_magpie_s1.jsonl: | setup
	$(BIN)/python -m specforge_het.data_gen gen_prompts $@ --@smollm2 --n 1700 --seed 1 --batch_size 64
runs/prompts/smollm2_mix2.jsonl: runs/prompts/smollm2_mix.jsonl runs/prompts/smollm2_magpie_s1.jsonl
	$(BIN)/python -m specforge_het.data_gen mix_prompts $@ runs/prompts/smollm2_mix.jsonl runs/prompts/smollm2_magpie_s1.jsonl \
		--shuffle=false --seed 0
.PHONY: data-smollm2-big-e features-smollm2-big-de draft-smollm2-eagle3-breadth-c
data-smollm2-big-e: runs/prompts/smollm2_mix2.jsonl
	$(BIN)/python -m specforge_het.data_gen gen_dataset runs/prompts/smollm2_mix2.jsonl --@smollm2 \
		--dataset_generation.dtype bfloat16 --dataset_generation.ds_range 2323,4008 --dataset_generation.output_dir $(BIG_E)
$(BIG_DE)/meta.json: | data-smollm2-big-e
	$(BIN)/python -m specforge_het.data_gen add_features $(BIG_D) --@smollm2 --@eagle_v3
	$(BIN)/python -m specforge_het.data_gen add_features $(BIG_E) --@smollm2 --@eagle_v3
	$(BIN)/python -m specforge_het.data_gen merge_datasets $(BIG_DE) $(BIG_D) $(BIG_E) --allow_gaps
features-smollm2-big-de: $(BIG_DE)/meta.json
$(WARM_C)/model.safetensors: $(WARM_B)/model.safetensors | features-smollm2-big-de
	$(call TRAIN_WARM,$(WARM_C)) --dataset.path $(BIG_DE) --modeling.init_draft $(WARM_B) --training.ttt_steps 7 \
		--training.learning_rate 6e-4 --training.eval_steps 400
draft-smollm2-eagle3-breadth-c: $(WARM_C)/model.safetensors
	$(BIN)/python -m specforge_het.drafts ship $(WARM_C) smollm2-135m-instruct-eagle3 --rebuild "make draft-smollm2-eagle3-breadth-c"

# Stage D of the warm-started draft (issue 13, session 13): the shipped stage-C draft, one more epoch over
# all four breadth parts (A, B, D, E: the 4,008 conversations answered so far, 2.19M answer tokens), the
# full 7-step unroll, learning rate 3e-4 decaying to 0. The references train for several epochs (SpecForge's
# default is 10); every earlier stage here saw its data once. Features are stored per part, then merged.
# Measured (session 13, docs/results.md): +0.03 τ over stage C on MT-Bench and held-out prompts; not shipped.
SMOL_ALL := runs/data/smollm2_all
WARM_D := runs/smollm2_eagle3_warm4
SMOL_PARTS := runs/data/smollm2_big $(BIG_B) $(BIG_D) $(BIG_E)
.PHONY: features-smollm2-all draft-smollm2-eagle3-breadth-d
$(SMOL_ALL)/meta.json: | data-smollm2-big-b data-smollm2-big-d data-smollm2-big-e
	for d in $(SMOL_PARTS); do $(BIN)/python -m specforge_het.data_gen add_features $$d --@smollm2 --@eagle_v3 || exit 1; done
	$(BIN)/python -m specforge_het.data_gen merge_datasets $(SMOL_ALL) $(SMOL_PARTS) --allow_gaps
features-smollm2-all: $(SMOL_ALL)/meta.json
# WARM_D_INIT: the stage-C run; session 13 started from the shipped stage-C draft (the same weights in bfloat16),
# as that run's folder keeps no weights here: WARM_D_INIT=specforge_het/drafts/smollm2-135m-instruct-eagle3.
WARM_D_INIT ?= $(WARM_C)
$(WARM_D)/model.safetensors: | features-smollm2-all
	[ -f $(WARM_D_INIT)/model.safetensors ] || $(MAKE) $(WARM_C)/model.safetensors
	$(call TRAIN_WARM,$(WARM_D)) --dataset.path $(SMOL_ALL) --modeling.init_draft $(WARM_D_INIT) --training.ttt_steps 7 \
		--training.learning_rate 3e-4 --training.eval_steps 400
draft-smollm2-eagle3-breadth-d: $(WARM_D)/model.safetensors
	$(BIN)/python -m specforge_het.drafts ship $(WARM_D) smollm2-135m-instruct-eagle3 --rebuild "make draft-smollm2-eagle3-breadth-d"

# Part F and stage E (issue 13, session 17): more breadth data, the lever the scaling study points at.
#   1. 1,700 more Magpie prompts from SmolLM2 (seed 2), appended after mix2 (no shuffle: rows 0-4007 stay what
#      parts A-E answered; duplicates of them and evaluation overlaps are dropped);
#   2. the base answers the new rows (part F), dtype auto (float32 on a CPU without AMX), batch 128; resumable;
#   3. stage E: the shipped draft trained on part F (never seen by it), 7 unroll steps, lr 6e-4 as stage C.
# Then `draft-smollm2-eagle3-breadth-e` ships it as smollm2-135m-instruct-eagle3 (when its bench is better).
BIG_F := runs/data/smollm2_big_f
WARM_E := runs/smollm2_eagle3_warm5
WARM_E_INIT ?= specforge_het/drafts/smollm2-135m-instruct-eagle3
runs/prompts/smollm2_magpie_s2.jsonl: | setup
	$(BIN)/python -m specforge_het.data_gen gen_prompts $@ --@smollm2 --n 1700 --seed 2 --batch_size 64
runs/prompts/smollm2_mix3.jsonl: runs/prompts/smollm2_mix2.jsonl runs/prompts/smollm2_magpie_s2.jsonl
	$(BIN)/python -m specforge_het.data_gen mix_prompts $@ runs/prompts/smollm2_mix2.jsonl \
		runs/prompts/smollm2_magpie_s2.jsonl --shuffle=false --seed 0
.PHONY: data-smollm2-big-f features-smollm2-big-f draft-smollm2-eagle3-breadth-e
data-smollm2-big-f: runs/prompts/smollm2_mix3.jsonl
	$(BIN)/python -m specforge_het.data_gen gen_dataset runs/prompts/smollm2_mix3.jsonl --@smollm2 \
		--dataset_generation.batch_size 128 --dataset_generation.ds_range 4008,5708 --dataset_generation.output_dir $(BIG_F)
# a file prerequisite, as for the earlier parts: once add_features has run, gen_dataset refuses the folder (its
# feature_layers differ), so a rebuild of the draft must not resume the data again
$(BIG_F)/meta.json: | runs/prompts/smollm2_mix3.jsonl
	$(MAKE) data-smollm2-big-f
features-smollm2-big-f: $(BIG_F)/meta.json
	$(BIN)/python -m specforge_het.data_gen add_features $(BIG_F) --@smollm2 --@eagle_v3
$(WARM_E)/model.safetensors: | features-smollm2-big-f
	$(call TRAIN_WARM,$(WARM_E)) --dataset.path $(BIG_F) --modeling.init_draft $(WARM_E_INIT) --training.ttt_steps 7 \
		--training.learning_rate 6e-4 --training.eval_steps 200
draft-smollm2-eagle3-breadth-e: $(WARM_E)/model.safetensors
	$(BIN)/python -m specforge_het.drafts ship $(WARM_E) smollm2-135m-instruct-eagle3 --rebuild "make draft-smollm2-eagle3-breadth-e"

# Part G (issue 13, session 19): 2,000 more Magpie prompts (seed 3) appended after mix3 as mix4 (rows 0-5685 stay what
# parts A-F answered), answered by the base with dtype auto (bfloat16 on a CPU with AMX or AVX512-BF16), batch 128.
# Resumable by part; stage F trains on its first two parts (G1, below), the next stage on the rest.
BIG_G := runs/data/smollm2_big_g
runs/prompts/smollm2_magpie_s3.jsonl: | setup
	$(BIN)/python -m specforge_het.data_gen gen_prompts $@ --@smollm2 --n 2000 --seed 3 --batch_size 64
runs/prompts/smollm2_mix4.jsonl: runs/prompts/smollm2_mix3.jsonl runs/prompts/smollm2_magpie_s3.jsonl
	$(BIN)/python -m specforge_het.data_gen mix_prompts $@ runs/prompts/smollm2_mix3.jsonl \
		runs/prompts/smollm2_magpie_s3.jsonl --shuffle=false --seed 0
.PHONY: data-smollm2-big-g
data-smollm2-big-g: runs/prompts/smollm2_mix4.jsonl
	$(BIN)/python -m specforge_het.data_gen gen_dataset runs/prompts/smollm2_mix4.jsonl --@smollm2 \
		--dataset_generation.batch_size 128 --dataset_generation.ds_range 5686,8000 --dataset_generation.output_dir $(BIG_G)
# Stage F (session 20): the stage-E run (float32 weights; WARM_F_INIT=specforge_het/drafts/smollm2-135m-instruct-eagle3
# starts from the shipped bfloat16 copy instead) trained one epoch on part G's first two parts (rows 5686-6655, G1,
# merged out of the G folder with --ds_range while G went on), 7 unroll steps, lr 6e-4 as stage E.
# Then `draft-smollm2-eagle3-breadth-f` ships it as smollm2-135m-instruct-eagle3 (when its bench is better).
BIG_G1 := runs/data/smollm2_big_g1
WARM_F := runs/smollm2_eagle3_warm6
WARM_F_INIT ?= $(WARM_E)
.PHONY: features-smollm2-big-g1 draft-smollm2-eagle3-breadth-f
$(BIG_G)/meta.json: | runs/prompts/smollm2_mix4.jsonl
	$(MAKE) data-smollm2-big-g
$(BIG_G1)/meta.json: | $(BIG_G)/meta.json
	$(BIN)/python -m specforge_het.data_gen merge_datasets $(BIG_G1) $(BIG_G) --ds_range 5686,6656
features-smollm2-big-g1: $(BIG_G1)/meta.json
	$(BIN)/python -m specforge_het.data_gen add_features $(BIG_G1) --@smollm2 --@eagle_v3
$(WARM_F)/model.safetensors: | features-smollm2-big-g1
	[ -f $(WARM_F_INIT)/model.safetensors ] || $(MAKE) $(WARM_E)/model.safetensors
	$(call TRAIN_WARM,$(WARM_F)) --dataset.path $(BIG_G1) --modeling.init_draft $(WARM_F_INIT) --training.ttt_steps 7 \
		--training.learning_rate 6e-4 --training.eval_steps 200
draft-smollm2-eagle3-breadth-f: $(WARM_F)/model.safetensors
	$(BIN)/python -m specforge_het.drafts ship $(WARM_F) smollm2-135m-instruct-eagle3 --rebuild "make draft-smollm2-eagle3-breadth-f"
# Stage G (session 21): the stage-F run trained one epoch on the rest of part G (rows 6656-7665, G2: its third and
# fourth parts, merged out of the finished G folder), 7 unroll steps, lr 6e-4 as stage F.
# Then `draft-smollm2-eagle3-breadth-g` ships it as smollm2-135m-instruct-eagle3 (when its bench is better).
BIG_G2 := runs/data/smollm2_big_g2
WARM_G := runs/smollm2_eagle3_warm7
WARM_G_INIT ?= $(WARM_F)
.PHONY: features-smollm2-big-g2 draft-smollm2-eagle3-breadth-g
$(BIG_G2)/meta.json: | $(BIG_G)/meta.json
	$(BIN)/python -m specforge_het.data_gen merge_datasets $(BIG_G2) $(BIG_G) --ds_range 6656,7666
features-smollm2-big-g2: $(BIG_G2)/meta.json
	$(BIN)/python -m specforge_het.data_gen add_features $(BIG_G2) --@smollm2 --@eagle_v3
$(WARM_G)/model.safetensors: | features-smollm2-big-g2
	[ -f $(WARM_G_INIT)/model.safetensors ] || $(MAKE) $(WARM_F)/model.safetensors
	$(call TRAIN_WARM,$(WARM_G)) --dataset.path $(BIG_G2) --modeling.init_draft $(WARM_G_INIT) --training.ttt_steps 7 \
		--training.learning_rate 6e-4 --training.eval_steps 200
draft-smollm2-eagle3-breadth-g: $(WARM_G)/model.safetensors
	$(BIN)/python -m specforge_het.drafts ship $(WARM_G) smollm2-135m-instruct-eagle3 --rebuild "make draft-smollm2-eagle3-breadth-g"

# Part H (session 22): short answers. runs/s22/accept_gap.py measured the shipped draft's depth-1 top-1 at 0.84 past
# answer position 256 but 0.44-0.55 in the first 128 tokens (what a 128-token bench decodes), with 64 % of G2's
# answer tokens past 256. So: 2,000 more Magpie prompts (seed 4) appended after mix4 as mix5 (rows 0-7665 stay
# what parts A-G answered), answered with at most 256 new tokens (projected then at about 2.5x the generated tokens/s of 1,024-token
# answers; measured: 394 and 387 tok/s against ~200). Resumable by part; the next stage trains on it.
# Short-answer parts and stages (sessions 22-23), one line each below.
# $(call short_part,P,SEED,PREV,MIX,FROM,TO): 2,000 Magpie prompts (SEED) appended to smollm2_mixPREV as smollm2_mixMIX
# (the rows before stay what earlier parts answered; a committed mix is never rebuilt: order-only prerequisites), rows FROM..TO answered with at most 256 new tokens (about 2x the
# generated tokens/s of 1,024-token answers) into runs/data/smollm2_big_P (resumable by part), then their features.
# The target is the assembled dataset/ (written last, atomically), not meta.json (written first): a killed run resumes.
# A fresh checkout (parts committed, dataset/ not) reruns gen_dataset: it finds every row answered and assembles dataset/.
define short_part
runs/prompts/smollm2_magpie_s$(2).jsonl: | setup
	$$(BIN)/python -m specforge_het.data_gen gen_prompts $$@ --@smollm2 --n 2000 --seed $(2) --batch_size 64
runs/prompts/smollm2_mix$(4).jsonl: | runs/prompts/smollm2_mix$(3).jsonl runs/prompts/smollm2_magpie_s$(2).jsonl
	$$(BIN)/python -m specforge_het.data_gen mix_prompts $$@ runs/prompts/smollm2_mix$(3).jsonl \
		runs/prompts/smollm2_magpie_s$(2).jsonl --append --shuffle=false --seed 0
.PHONY: data-smollm2-big-$(1) features-smollm2-big-$(1)
data-smollm2-big-$(1): runs/data/smollm2_big_$(1)/dataset/state.json
runs/data/smollm2_big_$(1)/dataset/state.json: | runs/prompts/smollm2_mix$(4).jsonl
	$$(BIN)/python -m specforge_het.data_gen gen_dataset runs/prompts/smollm2_mix$(4).jsonl --@smollm2 \
		--dataset_generation.batch_size 128 --dataset_generation.max_new_tokens 256 \
		--dataset_generation.ds_range $(5),$(6) --dataset_generation.output_dir runs/data/smollm2_big_$(1)
features-smollm2-big-$(1): runs/data/smollm2_big_$(1)/dataset/state.json
	$$(BIN)/python -m specforge_het.data_gen add_features runs/data/smollm2_big_$(1) --@smollm2 --@eagle_v3
endef
# $(call short_stage,P,OUT,INIT_VAR,PREV): the draft INIT_VAR names (default PREV, the previous stage's run) trained one
# epoch on part P into OUT: 7 unroll steps, lr 6e-4 as stage G, batch 4 (these rows are about half as long as G2's,
# 271 vs 630 tokens, so a step sees about as many tokens as stage G's batch 2); `make draft-smollm2-eagle3-breadth-P`
# ships it.
define short_stage
$(2)/model.safetensors: | features-smollm2-big-$(1)
	[ -f $$($(3))/model.safetensors ] || $$(MAKE) $(4)/model.safetensors
	$$(call TRAIN_WARM,$(2)) --dataset.path runs/data/smollm2_big_$(1) --modeling.init_draft $$($(3)) --training.ttt_steps 7 \
		--training.learning_rate 6e-4 --training.eval_steps 200 --training.per_device_batch_size 4
.PHONY: draft-smollm2-eagle3-breadth-$(1)
draft-smollm2-eagle3-breadth-$(1): $(2)/model.safetensors
	$$(BIN)/python -m specforge_het.drafts ship $(2) smollm2-135m-instruct-eagle3 --rebuild "make draft-smollm2-eagle3-breadth-$(1)"
endef
BIG_H := runs/data/smollm2_big_h
BIG_I := runs/data/smollm2_big_i
WARM_H := runs/smollm2_eagle3_warm8
WARM_I := runs/smollm2_eagle3_warm9
WARM_H_INIT ?= $(WARM_G)
WARM_I_INIT ?= $(WARM_H)
WARM_J := runs/smollm2_eagle3_warm10
WARM_K := runs/smollm2_eagle3_warm11
WARM_J_INIT ?= $(WARM_I)
WARM_K_INIT ?= $(WARM_J)
WARM_L := runs/smollm2_eagle3_warm12
# Session 26 ran stage L with WARM_L_INIT=specforge_het/drafts/smollm2-135m-instruct-eagle3 (stage K as shipped).
WARM_L_INIT ?= $(WARM_K)
WARM_M := runs/smollm2_eagle3_warm13
WARM_M_INIT ?= $(WARM_L)
# Part H (session 22, seed 4) and stage H (session 23, from stage G); part I and stage I (session 23, from stage H);
# part J (prompts session 23, answers session 24) and stage J (session 24, from stage I); part K (seed 7) and stage K
# (session 24, from stage J, shipped); parts L, M (seeds 8, 9) and stages L, M (session 25,
# each from the one before). mix5 and mix6 were
# made before --append (re-filtering the earlier mix kept all its rows then); from mix7 on --append keeps them as
# they are (session 23 found re-filtering mix6 dropped a row: the near-duplicate check depended on the hash seed).
$(eval $(call short_part,h,4,4,5,7666,9700))
$(eval $(call short_stage,h,$(WARM_H),WARM_H_INIT,$(WARM_G)))
$(eval $(call short_part,i,5,5,6,9630,11700))
$(eval $(call short_stage,i,$(WARM_I),WARM_I_INIT,$(WARM_H)))
$(eval $(call short_part,j,6,6,7,11596,13700))
$(eval $(call short_stage,j,$(WARM_J),WARM_J_INIT,$(WARM_I)))
$(eval $(call short_part,k,7,7,8,13554,15700))
$(eval $(call short_stage,k,$(WARM_K),WARM_K_INIT,$(WARM_J)))
$(eval $(call short_part,l,8,8,9,15513,17700))
$(eval $(call short_stage,l,$(WARM_L),WARM_L_INIT,$(WARM_K)))
$(eval $(call short_part,m,9,9,10,17467,19700))
$(eval $(call short_stage,m,$(WARM_M),WARM_M_INIT,$(WARM_L)))

# Multi-turn stage (issue 13, session 16; runs/s16/multiturn.sh did the same): SmolLM2 writes a second user turn
# (gen_followups) for breadth conversations whose first answer ended within 384 tokens (250 from the first 768,
# 150 from part B), 150 of part D get a generic request that reworks the answer (--requests shipped), the base answers both turns (<= 512 new tokens each, float32), features, then the shipped
# draft trains one epoch over them (7 unroll steps, lr 3e-4). Measured: τ -0.02 / +0.03 / -0.03 on three prompt sets
# (docs/results.md, "Multi-turn data"), so not shipped: there is no ship step.
MT_PROMPTS := runs/prompts/smollm2_followups
MT_DATA := runs/data/smollm2_mt
WARM_MT := runs/smollm2_eagle3_mt
# WARM_MT_INIT: the stage-C run; session 16 started from the shipped stage-C draft (the same weights in bfloat16):
# WARM_MT_INIT=specforge_het/drafts/smollm2-135m-instruct-eagle3 while that is still stage C.
WARM_MT_INIT ?= $(WARM_C)
FOLLOWUPS = $(BIN)/python -m specforge_het.data_gen gen_followups $(1) $(2) --@smollm2 --n $(3) --batch_size 32 \
	--max_answer_tokens 384 --seed 0
.PHONY: data-smollm2-mt draft-smollm2-eagle3-mt
$(MT_PROMPTS).jsonl: | data-smollm2-big data-smollm2-big-b data-smollm2-big-d
	[ -f $(MT_PROMPTS)_a.jsonl ] || $(call FOLLOWUPS,$(MT_PROMPTS)_a.jsonl,runs/data/smollm2_big,250)
	[ -f $(MT_PROMPTS)_b.jsonl ] || $(call FOLLOWUPS,$(MT_PROMPTS)_b.jsonl,$(BIG_B),150)
	[ -f $(MT_PROMPTS)_c.jsonl ] || $(call FOLLOWUPS,$(MT_PROMPTS)_c.jsonl,$(BIG_D),150) --requests shipped
	$(BIN)/python -m specforge_het.data_gen mix_prompts $@ $(MT_PROMPTS)_a.jsonl $(MT_PROMPTS)_b.jsonl \
		$(MT_PROMPTS)_c.jsonl --seed 0
data-smollm2-mt: $(MT_PROMPTS).jsonl
	$(BIN)/python -m specforge_het.data_gen gen_dataset $< --@smollm2 --dataset_generation.output_dir $(MT_DATA) \
		--dataset_generation.max_new_tokens 512 --dataset_generation.batch_size 64
	$(BIN)/python -m specforge_het.data_gen add_features $(MT_DATA) --@smollm2 --@eagle_v3
$(WARM_MT)/model.safetensors: | data-smollm2-mt
	[ -f $(WARM_MT_INIT)/model.safetensors ] || $(MAKE) $(WARM_C)/model.safetensors
	$(BIN)/python -m specforge_het.train --@smollm2 --@eagle_v3 --training.mode offline --dataset.path $(MT_DATA) \
		--modeling.init_draft $(WARM_MT_INIT) --training.ttt_steps 7 \
		--training.per_device_batch_size 2 --training.learning_rate 3e-4 --training.warmup_ratio 0.02 \
		--training.num_epochs 1 --dataset.max_length 2048 --dataset.eval_fraction 0.03 --training.logging_steps 10 \
		--training.eval_steps 100 --training.save_steps 40 --training.save_total_limit 2 --training.output_dir $(WARM_MT) \
		$(if $(wildcard $(WARM_MT)/checkpoint-*),--training.resume_from_checkpoint last)
draft-smollm2-eagle3-mt: $(WARM_MT)/model.safetensors

