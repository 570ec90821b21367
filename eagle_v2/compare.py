"""Side-by-side comparison of our EagleV2 decoding with the reference EAGLE code (PyPI eagle-llm).

    python -m eagle_v2.compare --draft untrained --prompts mtbench:3 --max_new_tokens 64

The same draft weights (exported to the original EAGLE layout by specforge_het.export.eagle) run
in our decoder and, through eagle_v2/reference_worker.py, in eagle-llm's EaModel inside its own
virtual environment (bash eagle_v2/setup_reference_env.sh). Same prompts, same chat template
(rendered once here, token ids sent over), same max_new_tokens, greedy, the reference's static
EAGLE-1 tree (mc_sim_7b_63) on both sides. Printed: τ, tokens/s and output equality of ours /
reference / base-only, and the parts: weights, base features, draft outputs on the same
features, and the draft tree built from the same features.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from eagle_v2.parts import compare_hidden, compare_logits, compare_static_tree, compare_weights
from eagle_v2.protocol import DEFAULT_REF_PYTHON, TASKS, ReferenceUnavailable, Request, run_worker
from eagle_v2.report import BASE, OURS, SPEC, merge_runs, notes_lines, parts_table, run_record, runs_table, summarise
from specforge_het.inference import harness
from specforge_het.inference.decoder import Decoder, eos_ids
from specforge_het.inference.harness import decoder_method
from specforge_het.inference.prompts import Conversation, load_conversations, render
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.tree import static_parents
from specforge_het.models.base import LAST, BaseModel

SHIPPED_DRAFT = "smollm2-135m-instruct-eagle2"


class PathsProposer(DraftProposer):
    """Our static-tree proposer on an explicit list of choices (the reference's mc_sim_7b_63)."""

    def __init__(self, draft, paths: list[list[int]]):
        super().__init__(draft, TreeSpec(kind="static"))
        self.paths = [tuple(p) for p in paths]
        self._static = static_parents(self.paths)

    def depth(self) -> int:
        return max(len(p) for p in self.paths)


# ------------------------------------------------------------------ our side
def load_our_draft(spec: str, base, seed: int = 0):
    """'untrained' (a fresh EAGLE-1-layout EagleV2 draft), one of our draft folders, or an original EAGLE folder."""
    from specforge_het.algorithms.build import build_draft
    from specforge_het.algorithms.io import load_draft
    from specforge_het.assets import resolve_draft_path
    from specforge_het.config import ModelingConfig

    if spec == "untrained":
        m = ModelingConfig(base_model=base.name, algorithm="eagle_v2", vocab="base", draft_first_input_norm=False)
        return build_draft(m, base, seed=seed).train(False)
    folder = resolve_draft_path(spec or SHIPPED_DRAFT)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"draft '{spec or SHIPPED_DRAFT}' not found ({cfg_path} missing); pass --draft FOLDER "
                                "or --draft untrained")
    if json.loads(cfg_path.read_text()).get("format") == "specforge_het.draft":
        return load_draft(folder, base).train(False)
    from specforge_het.export.eagle import import_eagle_checkpoint

    return import_eagle_checkpoint(folder, base)


def our_weights(draft) -> tuple[dict, dict, tuple]:
    """(our tensors incl. the embedding table, EAGLE name -> our name, tensors we own but never read)."""
    from specforge_het.export.common import embedding_table
    from specforge_het.export.sglang_eagle import UNUSED, eagle_key_map

    state = dict(draft.trainable_state_dict())
    state["embed_tokens.weight"] = embedding_table(draft)
    key_map = {**eagle_key_map(draft.cfg.num_layers), "embed_tokens.weight": "embed_tokens.weight"}
    return state, key_map, UNUSED


@torch.no_grad()
def our_inputs(base, draft, prompt_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Base features of one prompt [1, n] and the first new token: the inputs both sides get."""
    out = base.features(prompt_ids, (LAST,))
    return {"prompt_ids": prompt_ids, "prompt_features": out.features.contiguous(),
            "root": out.logits[0, -1].argmax().view(1), "base_logits": out.logits.contiguous(),
            "draft_ids": prompt_ids[:, 1:].contiguous(), "draft_features": out.features[:, :-1].contiguous()}


@torch.no_grad()
def our_draft_forward(draft, ids: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(ids.shape[1])[None]
    hidden = draft(ids, draft.input_from_base(ids, feats), pos)
    return hidden, draft.logits(hidden)


def our_tree(draft, paths, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    prop = PathsProposer(draft, paths)
    prop.start(x["prompt_ids"][0], int(x["root"]), x["prompt_features"][0])
    return prop.propose()


def our_generation(base, draft, paths, convs: list[Conversation], max_new: int, warmup: bool) -> list[dict]:
    """Base-only and speculative decoding of each conversation's first turn through the evaluation harness
    (inference/harness.py: whole calls timed, prefill included, as the reference times them), as run records."""
    methods = [decoder_method(BASE, Decoder(base)), decoder_method(SPEC, Decoder(base, PathsProposer(draft, paths)))]
    firsts = [Conversation(str(i), c.turns[:1]) for i, c in enumerate(convs)]

    def render_chat(messages: list[dict]) -> torch.Tensor:
        return render(base.tokenizer, messages)

    recs = harness.records(methods, firsts, render_chat, None, max_new, base.device, warmup_tokens=4 if warmup else 0)
    return [run_record(OURS, r.method, int(r.conversation), r.token_ids, r.accept_lengths, r.seconds) for r in recs]


# ------------------------------------------------------------------ parts
def compare_parts(resp: dict | None, work: Path, draft, x: dict, paths) -> dict:
    """Every part the reference produced, against ours; a missing part says why."""
    results = (resp or {}).get("results", {})
    errors = (resp or {}).get("errors", {})
    parts: dict[str, dict] = {}

    def missing(task: str) -> dict:
        return {"error": errors.get(task) or errors.get("load") or "the reference did not run this task"}

    if "weights" in results:
        ours, key_map, unused = our_weights(draft)
        parts["weights"] = compare_weights(ours, load_file(str(work / results["weights"]["file"])), key_map, unused)
    else:
        parts["weights"] = missing("weights")
    if "features" in results:
        ref = load_file(str(work / results["features"]["file"]))
        parts["base features (final normed hidden)"] = compare_hidden(x["prompt_features"], ref["hidden"])
        parts["base logits"] = compare_logits(x["base_logits"], ref["logits"])
    else:
        parts["base features (final normed hidden)"] = missing("features")
    if "draft_forward" in results:
        ref = load_file(str(work / results["draft_forward"]["file"]))
        hidden, logits = our_draft_forward(draft, x["draft_ids"], x["draft_features"])
        parts["draft output on our features"] = compare_hidden(hidden, ref["hidden_out"])
        parts["draft logits on our features"] = compare_logits(logits, ref["logits"])
    else:
        parts["draft output on our features"] = missing("draft_forward")
    if "tree" in results:
        tokens, parents = our_tree(draft, paths, x)
        parts["static tree"] = compare_static_tree(tokens, parents, load_file(str(work / results["tree"]["file"])))
    else:
        parts["static tree"] = missing("tree")
    return parts


# ------------------------------------------------------------------ entry point
def main(base: str = "smollm2-135m-instruct", draft: str = "", prompts: str = "mtbench:3", max_new_tokens: int = 64,
         ref_python: str = DEFAULT_REF_PYTHON, rope_theta_shim: bool = False, threads: int = 1,
         out: str = "runs/eagle_bridge", tasks: str = ",".join(TASKS), seed: int = 0, warmup: bool = True,
         timeout_s: float = 3600.0) -> None:
    """Run both sides and print the comparison; the full report goes to OUT/report.json."""
    console = Console(emoji=False, width=max(Console().width, 150))
    torch.set_num_threads(threads)
    work = Path(out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    bm = BaseModel.load(base)
    d = load_our_draft(draft, bm, seed)
    from specforge_het.export.common import ExportOptions
    from specforge_het.export.eagle import export_eagle

    # force: a draft rope theta other than eagle-llm's fixed 10000 is written as is; the comparison shows its effect
    # (and --rope_theta_shim makes the reference read it).
    eagle_dir = export_eagle(d, work / "draft_eagle_layout", options=ExportOptions(force=True))
    convs = load_conversations(prompts)
    ids = [render(bm.tokenizer, [{"role": "user", "content": c.turns[0]}]) for c in convs]
    x = our_inputs(bm, d, ids[0])
    save_file({k: v.clone() for k, v in x.items() if k != "base_logits"}, str(work / "inputs.safetensors"))
    task_list = tuple(t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip())
    req = Request(base_path=str(Path(bm.model.name_or_path).resolve()), draft_path=str(eagle_dir), work_dir=str(work),
                  prompts=[p[0].tolist() for p in ids], max_new_tokens=max_new_tokens, tasks=task_list,
                  rope_theta_shim=rope_theta_shim, threads=threads, warmup=warmup)
    t0 = time.perf_counter()
    try:
        resp = run_worker(ref_python, req, timeout_s)
    except ReferenceUnavailable as exc:
        console.print(f"[red]reference unavailable:[/] {exc}")
        resp = {"errors": {"load": str(exc)}, "results": {}}
    ref_s = time.perf_counter() - t0
    paths = ((resp.get("env") or {}).get("tree_choices")) or [[0], [1], [0, 0], [0, 0, 0]]
    ours = our_generation(bm, d, paths, convs, max_new_tokens, warmup) if "generate" in task_list else []
    runs = merge_runs(ours, resp)
    summary = summarise(runs, eos_ids(bm), max_new_tokens)
    parts = compare_parts(resp, work, d, x, paths)
    label = "reference+rope_theta shim" if rope_theta_shim else "reference"
    theta = getattr(bm.config, "rope_theta", None) or (getattr(bm.config, "rope_parameters", None) or {}).get("rope_theta")
    notes = notes_lines(resp, theta)
    console.print(runs_table(summary, label))
    console.print(parts_table(parts))
    for line in notes:
        console.print(f"• {line}", markup=False, highlight=False)
    report = {"base": base, "draft": draft or SHIPPED_DRAFT, "prompts": prompts, "max_new_tokens": max_new_tokens,
              "threads": threads, "reference_label": label, "reference_wall_s": round(ref_s, 1), "summary": summary,
              "parts": parts, "notes": notes, "runs": runs, "reference_env": resp.get("env"),
              "reference_load": resp.get("load")}
    (work / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    console.print(f"report: {work / 'report.json'}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
