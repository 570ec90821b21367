#!/bin/bash
# Session 13: features for the four SmolLM2 breadth parts, merged, then stage D (Makefile: draft-smollm2-eagle3-breadth-d,
# with WARM_D_INIT = the shipped stage-C draft). Commands as in the Makefile recipes.
set -x
cd /work/main
B=.venv/bin/python
for d in runs/data/smollm2_big runs/data/smollm2_big_b runs/data/smollm2_big_d runs/data/smollm2_big_e; do
  $B -m specforge_het.data_gen add_features $d --@smollm2 --@eagle_v3 || exit 1
done
[ -f runs/data/smollm2_all/meta.json ] || $B -m specforge_het.data_gen merge_datasets runs/data/smollm2_all runs/data/smollm2_big runs/data/smollm2_big_b runs/data/smollm2_big_d runs/data/smollm2_big_e --allow_gaps || exit 1
[ -f runs/data/smollm2_all/meta.json ] && rm -rf runs/data/smollm2_big/features runs/data/smollm2_big_b/features runs/data/smollm2_big_d/features runs/data/smollm2_big_e/features
make WARM_D_INIT=specforge_het/drafts/smollm2-135m-instruct-eagle3 runs/smollm2_eagle3_warm4/model.safetensors -o features-smollm2-all -o runs/data/smollm2_all/meta.json
echo "== done $(date)"
