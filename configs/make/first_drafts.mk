# Rebuild the shipped drafts from scratch (CPU; docs/results.md gives the times).
# Each step resumes where it stopped; the data is base-generated answers to the shipped training prompts.
PROMPTS := specforge_het/data/files/train_prompts.jsonl
GEN := $(BIN)/python -m specforge_het.data_gen gen_dataset $(PROMPTS) --@smollm2 --dataset_generation.dtype float32 \
	--dataset_generation.batch_size 8 --dataset_generation.max_new_tokens 128
TRAIN_SMOLLM2 := $(BIN)/python -m specforge_het.train --@smollm2 --dataset.path runs/data/smollm2_328 \
	--modeling.init_from smollm2-135m-instruct --modeling.init_layers 29 --training.per_device_batch_size 4 \
	--training.learning_rate 2e-3 --training.warmup_ratio 0.05 --dataset.max_length 1024 --dataset.eval_fraction 0.03 \
	--training.eval_steps 50 --training.logging_steps 10 --training.save_steps 50

.PHONY: data-smollm2 data-smollm2-all draft-smollm2-eagle3 draft-smollm2-eagle2 data-gemma draft-gemma3-het

runs/data/smollm2_328/meta.json: | setup
	$(GEN) --dataset_generation.output_dir runs/data/smollm2 --dataset_generation.ds_range 0,160
	$(GEN) --dataset_generation.output_dir runs/data/smollm2_g --dataset_generation.ds_range 160,328
	$(BIN)/python -m specforge_het.data_gen merge_datasets runs/data/smollm2_328 runs/data/smollm2 runs/data/smollm2_g --allow_gaps

data-smollm2: runs/data/smollm2_328/meta.json

# All 875 training prompts (the first 328 above, then the rest at batch 16): 874 conversations.
runs/data/smollm2_875/meta.json: runs/data/smollm2_328/meta.json
	$(GEN) --dataset_generation.batch_size 16 --dataset_generation.output_dir runs/data/smollm2_p --dataset_generation.ds_range 328,360
	$(GEN) --dataset_generation.batch_size 16 --dataset_generation.output_dir runs/data/smollm2_h --dataset_generation.ds_range 360,875
	$(BIN)/python -m specforge_het.data_gen merge_datasets runs/data/smollm2_875 runs/data/smollm2 runs/data/smollm2_g \
		runs/data/smollm2_p runs/data/smollm2_h --allow_gaps

data-smollm2-all: runs/data/smollm2_875/meta.json

# EagleV3 in two stages: 200 steps on the first 328 conversations, then on from that draft
# (--modeling.init_draft) over all of them (874 conversations: one prompt is too long) with bfloat16 autocast.
EAGLE3_MORE_STEPS ?= 540
draft-smollm2-eagle3: data-smollm2 data-smollm2-all
	$(TRAIN_SMOLLM2) --@eagle_v3 --modeling.draft_vocab_size 8192 --training.ttt_steps 5 --training.max_steps 200 \
		--training.output_dir runs/smollm2_eagle3
	$(BIN)/python -m specforge_het.train --@smollm2 --@eagle_v3 --modeling.init_draft runs/smollm2_eagle3 \
		--dataset.path runs/data/smollm2_875 --training.bf16 true --training.ttt_steps 3 --training.per_device_batch_size 4 \
		--training.learning_rate 1.5e-3 --training.warmup_ratio 0.03 --dataset.max_length 1024 --dataset.eval_fraction 0.03 \
		--training.max_steps $(EAGLE3_MORE_STEPS) --training.eval_steps 60 --training.logging_steps 10 --training.save_steps 60 \
		--training.output_dir runs/smollm2_eagle3_more
	$(BIN)/python -m specforge_het.drafts ship runs/smollm2_eagle3_more smollm2-135m-instruct-eagle3 --rebuild "make draft-smollm2-eagle3"

draft-smollm2-eagle2: data-smollm2
	$(TRAIN_SMOLLM2) --@eagle_v2 --training.max_steps 150 --training.output_dir runs/smollm2_eagle2
	$(BIN)/python -m specforge_het.drafts ship runs/smollm2_eagle2 smollm2-135m-instruct-eagle2 --rebuild "make draft-smollm2-eagle2"

# The heterogeneous pair: Gemma-3-270M base, Llama-family draft of width 576 with SmolLM2's tokenizer,
# initialised from SmolLM2's layer 15; shipped with its head cut to the 8192 most frequent rows.
# Stage 1 is a 120-step schedule whose step-40 checkpoint (GEMMA_STAGE1; the run was stopped there)
# starts stage 2: 90 steps on, bfloat16 autocast, 3-step unroll.
GEMMA_STAGE1 ?= runs/gemma_het/checkpoint-40
runs/data/gemma/meta.json: | setup
	$(BIN)/python -m specforge_het.data_gen gen_dataset $(PROMPTS) --@gemma3 --dataset_generation.batch_size 8 \
		--dataset_generation.dtype float32 --dataset_generation.max_new_tokens 128 --dataset_generation.output_dir runs/data/gemma \
		--dataset_generation.ds_range 0,320

data-gemma: runs/data/gemma/meta.json

$(GEMMA_STAGE1)/config.json: | data-gemma
	$(BIN)/python -m specforge_het.train --@gemma3_smollm2_het_init --dataset.path runs/data/gemma \
		--training.per_device_batch_size 4 --training.learning_rate 2e-3 --training.warmup_ratio 0.05 \
		--dataset.max_length 1024 --dataset.eval_fraction 0.03 --training.eval_steps 40 --training.logging_steps 10 \
		--training.save_steps 40 --training.ttt_steps 5 --training.max_steps 120 --training.output_dir runs/gemma_het

draft-gemma3-het: $(GEMMA_STAGE1)/config.json
	$(BIN)/python -m specforge_het.train --@gemma3_smollm2_het --modeling.init_draft $(GEMMA_STAGE1) \
		--dataset.path runs/data/gemma --training.bf16 true --training.ttt_steps 3 --training.per_device_batch_size 4 \
		--training.learning_rate 1.5e-3 --training.warmup_ratio 0.03 --dataset.max_length 1024 --dataset.eval_fraction 0.03 \
		--training.max_steps 90 --training.eval_steps 30 --training.logging_steps 5 --training.save_steps 30 \
		--training.output_dir runs/gemma_het_more
	$(BIN)/python -m specforge_het.drafts ship runs/gemma_het_more gemma3-270m-smollm2-het --vocab_rows 8192 \
		--rebuild "make draft-gemma3-het"

