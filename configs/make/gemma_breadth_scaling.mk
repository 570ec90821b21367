# The heterogeneous pair on breadth data (issue 13): Gemma-3-270M (a base model: plain User:/Assistant:
# layout, no chat template) answers the 4,008 prompts of the SmolLM2 mix2 (SmolLM2's Magpie prompts, the
# shipped training prompts with GSM8K train; evaluation sets kept out) with up to 256 new tokens each, in
# bfloat16 (Gemma rarely ends an answer: nearly every row stops at the cap, finish_reason "length").
# Then features, and a new heterogeneous draft trained over them (offline): SmolLM2's layer 15 as its layer,
# the 8192 foreign rows whose Gemma ids the answers use most as its head (the shipped draft's 8192 rows,
# picked from the first 71k-token data, cover 91.7 % of these answer tokens; the 8192 most used Gemma ids 99.5 %).
GEMMA_BIG := runs/data/gemma_big
GEMMA_WARM := runs/gemma_het_big
# one epoch at batch 4 (3,928 conversations): the first 740 steps ran in one session (shipped then), the
# rest resumed from checkpoint-740 in the next with the 982-step schedule (lr 2.5e-4 decaying to 0), same data order
GEMMA_STEPS ?= 982
.PHONY: data-gemma-big features-gemma-big draft-gemma3-het-big
data-gemma-big: runs/prompts/smollm2_mix2.jsonl
	$(BIN)/python -m specforge_het.data_gen gen_dataset runs/prompts/smollm2_mix2.jsonl --@gemma3 \
		--dataset_generation.dtype bfloat16 --dataset_generation.batch_size 64 --dataset_generation.max_new_tokens 256 \
		--dataset_generation.ds_range 0,4008 --dataset_generation.output_dir $(GEMMA_BIG)
features-gemma-big: data-gemma-big
	$(BIN)/python -m specforge_het.data_gen add_features $(GEMMA_BIG) --@gemma3_smollm2_het
$(GEMMA_WARM)/model.safetensors: | features-gemma-big
	$(BIN)/python -m specforge_het.train --@gemma3_smollm2_het_init --modeling.draft_vocab_size 8192 \
		--training.mode offline --dataset.path $(GEMMA_BIG) --training.ttt_steps 5 --training.per_device_batch_size 4 \
		--training.learning_rate 1e-3 --training.warmup_ratio 0.02 --training.max_steps $(GEMMA_STEPS) --dataset.max_length 1024 \
		--dataset.eval_fraction 0.02 --training.logging_steps 12 --training.eval_steps 240 --training.save_steps 48 \
		--training.save_total_limit 1000 --training.output_dir $(GEMMA_WARM) \
		$(if $(wildcard $(GEMMA_WARM)/checkpoint-*),--training.resume_from_checkpoint last)
draft-gemma3-het-big: $(GEMMA_WARM)/model.safetensors
	$(BIN)/python -m specforge_het.drafts ship $(GEMMA_WARM) gemma3-270m-smollm2-het --vocab_rows 8192 \
		--rebuild "make draft-gemma3-het-big"

# Scaling study: τ on MT-Bench (10 questions x 2 turns, 128 tokens, the tree_cpu tree, no lookup) of
# the run's checkpoints after SCALING_STEPS steps (2 conversations each; every 24 steps are kept) and
# of the stage-1 and stage-2 drafts, each point's tokens read from its training log; then the table, JSON and plot in docs/results/.
# The checkpoints share one learning-rate schedule (linear decay over the epoch), so an early point has
# seen its tokens at a higher learning rate than a run of that length would end with.
SCALING_STEPS ?= 24 96
scaling-smollm2: $(BIG_RUN2)/model.safetensors
	for p in $(SCALING_STEPS:%=s%) stage1 stage2; do d=runs/scaling/smollm2/$$p; mkdir -p $$d; \
	  case $$p in stage1) src=$(BIG_RUN);; stage2) src=$(BIG_RUN2);; *) src=$(BIG_RUN)/checkpoint-$${p#s};; esac; \
	  [ -f $$d/bench.json ] || $(BIN)/python -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu \
	    --modeling.draft_path $$src --prompts mtbench:10 --inference.max_new_tokens 128 --methods ours-tree \
	    --outfile $$d/bench.json || exit 1; \
	done
	$(BIN)/python -m specforge_het.bench.scaling runs/scaling/smollm2 --outfile docs/results/scaling_smollm2.json \
		--title "SmolLM2-135M EagleV3 draft: τ on MT-Bench vs training tokens"

# The warm-started lineage that was shipped (stages A, B, C above: 0.42M, 0.95M, 2.15M answer tokens trained on
# since the earlier 874-conversation draft) as a second series of the same plot, with the same bench. Its first
# init_draft is the shipped folder, which stage C replaced (or WARM_INIT in a rebuild): --count_from starts the count there. The drafts'
# weights are not committed: a missing point needs `make draft-smollm2-eagle3-breadth-c` first.
# warm4 is stage E (run folder $(WARM_E)), warm5 stage F ($(WARM_F)), ..., warm9 stage J, warm10 stage K, warm11 stage L (stage M: not made yet). Stage E was trained from the shipped folder while that held stage C, which stage E
# has since replaced: --trained_from links it to stage C's run. Stage L was trained (session 26) from the shipped stage-K
# draft, since stage K's run folder was lost with session 25's machine: linked to stage K's run. Each point keeps its
# count in tokens.json (committed), which counts the points whose run folders a fresh checkout lacks.
WARM_POINTS := warm:$(WARM_A) warm2:$(WARM_B) warm3:$(WARM_C) warm4:$(WARM_E) warm5:$(WARM_F) warm6:$(WARM_G) warm7:$(WARM_H) warm8:$(WARM_I) \
	warm9:$(WARM_J) warm10:$(WARM_K) warm11:$(WARM_L)
scaling-smollm2-warm: | setup
	for p in $(WARM_POINTS); do n=$${p%%:*}; d=runs/scaling/smollm2_warm_started/$$n; mkdir -p $$d; \
	  [ -f $$d/bench.json ] || $(BIN)/python -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu \
	    --modeling.draft_path $${p#*:} --prompts mtbench:10 --inference.max_new_tokens 128 --methods ours-tree \
	    --outfile $$d/bench.json || exit 1; \
	done
	$(BIN)/python -m specforge_het.bench.scaling runs/scaling/smollm2,runs/scaling/smollm2_warm_started \
		--count_from specforge_het/drafts/smollm2-135m-instruct-eagle3,$(WARM_INIT) --trained_from $(WARM_E)=$(WARM_C),$(WARM_L)=$(WARM_K) \
		--outfile docs/results/scaling_smollm2.json --targets 2.2,2.5 \
		--title "SmolLM2-135M EagleV3 draft: τ on MT-Bench vs training tokens"
