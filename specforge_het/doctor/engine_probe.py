"""`python -m specforge_het.doctor.engine_probe BASE DRAFT`: load a saved base and an exported EAGLE-3 draft in
sglang.Engine, generate a few greedy tokens from token ids, print one JSON line. Run by the doctor in a
subprocess (SGLang starts worker processes and owns the GPU while it runs)."""

from __future__ import annotations

import json
import sys


def probe(base: str, draft: str, new_tokens: int = 8) -> dict:
    import sglang

    engine = sglang.Engine(model_path=base, speculative_algorithm="EAGLE3", speculative_draft_model_path=draft,
                           speculative_num_steps=3, speculative_eagle_topk=1, speculative_num_draft_tokens=4,
                           skip_tokenizer_init=True, mem_fraction_static=0.3, disable_cuda_graph=True,
                           log_level="error")
    try:
        out = engine.generate(input_ids=list(range(2, 34)), sampling_params={"max_new_tokens": new_tokens,
                                                                             "temperature": 0.0})
        meta = out.get("meta_info", {})
        return {"ok": len(out.get("output_ids", [])) > 0, "sglang": sglang.__version__,
                "output_ids": out.get("output_ids", []), "spec_verify_ct": meta.get("spec_verify_ct"),
                "completion_tokens": meta.get("completion_tokens")}
    finally:
        engine.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m specforge_het.doctor.engine_probe BASE_FOLDER DRAFT_FOLDER")
    print(json.dumps(probe(sys.argv[1], sys.argv[2])))
