"""Cost-model tree sizing (`--inference.tree auto`): pure functions on synthetic costs and
acceptances, the batched acceptance measurement against a plain unrolled draft and the real
proposer, and the inference CLI end to end (outputs identical to base-only)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import draft_modeling

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import save_draft
from specforge_het.cli import run_cli
from specforge_het.inference import calibrate
from specforge_het.inference.__main__ import main
from specforge_het.inference.accept import greedy_accept
from specforge_het.inference.cost_model import (
    Acceptance,
    Costs,
    TreeShape,
    acceptance_from_ranks,
    acceptance_from_training_log,
    candidate_shapes,
    evaluate,
    expected_tau,
    expected_tau_chain,
    expected_taus,
    interpolate,
    monotone,
    search,
)
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.tree import build_dynamic_tree


def acc_of(*rows, source="synthetic") -> Acceptance:
    return Acceptance(tuple(tuple(r) for r in rows), source)


def flat_costs(verify, draft_fixed=1e-6, draft_step=1e-6, update=1e-6, head=1e-6, base_step=0.1) -> Costs:
    return Costs(tuple(verify), ((1, head), (8, head)), ((1, draft_fixed), (8, draft_fixed)),
                 ((1, draft_step), (8, draft_step)), ((1, update), (8, update)), base_step)


# ---------------------------------------------------------------- expected accept length


def test_chain_tau_is_the_geometric_sum():
    p = 0.6
    acc = acc_of([p, 0.2])
    for depth in range(0, 7):
        assert expected_tau_chain(acc, depth) == pytest.approx((1 - p ** (depth + 1)) / (1 - p))
    per_depth = acc_of([0.5], [0.4], [0.2])
    assert expected_tau_chain(per_depth, 3) == pytest.approx(1 + 0.5 + 0.5 * 0.4 + 0.5 * 0.4 * 0.2)
    assert expected_tau_chain(per_depth, 5) == pytest.approx(1 + 0.5 + 0.2 + 0.04 + 0.008 + 0.0016)  # last depth reused


def test_dynamic_tau_hand_computed():
    """Depth 2, top_k 2: candidates 0.6, 0.3 (depth 1); 0.6*0.55, 0.6*0.2, 0.3*0.55, 0.3*0.2 (depth 2)."""
    acc = acc_of([0.6, 0.3], [0.55, 0.2])
    tau = [expected_tau(acc, TreeShape("dynamic", 2, 2, n)) for n in (2, 3, 4, 5, 6, 7)]
    assert tau == pytest.approx([1.6, 1.93, 2.23, 2.395, 2.515, 2.575])
    # with top_k 1 the dynamic tree is the chain
    assert expected_tau(acc, TreeShape("dynamic", 2, 1, 3)) == pytest.approx(expected_tau_chain(acc, 2))
    assert expected_tau(acc, TreeShape("chain", 2, 1, 3)) == pytest.approx(1 + 0.6 + 0.33)


def test_batched_taus_equal_one_tree_build_per_shape():
    acc = acc_of([0.5, 0.2, 0.1, 0.1], [0.6, 0.3, 0.05, 0.0], [1.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.2, 0.1])  # ties, ones
    shapes = candidate_shapes(depths=(1, 2, 4), top_ks=(1, 2, 3, 4), totals=(3, 4, 6, 9, 16, 30))
    assert expected_taus(acc, shapes) == pytest.approx([expected_tau(acc, s) for s in shapes], abs=1e-12)


def test_dynamic_tau_matches_simulated_greedy_verification():
    """E[τ] = 1 + Σ P(node accepted) agrees with the decoder's greedy_accept on base tokens drawn
    from the acceptance model (rank r with probability a[d][r], else a token outside the tree)."""
    acc = acc_of([0.35, 0.2, 0.1], [0.5, 0.15, 0.05], [0.6, 0.1, 0.1])
    depth, k, n = 3, 3, 9
    calls = [0]

    def step(tokens, parent_rows):
        calls[0] += 1
        return torch.tensor(acc.row(calls[0] + 1, k)).log().expand(tokens.shape[0], k)

    tokens, parents, _ = build_dynamic_tree(step, torch.tensor(acc.row(1, k)).log(), k, depth, n)
    depth_of = [0] * n
    for i in range(1, n):
        depth_of[i] = depth_of[int(parents[i])] + 1
    gen = torch.Generator().manual_seed(0)
    trials, total = 4000, 0
    draws = []  # per node: the base's token after it, rank r of the draft or k = none of them
    for i in range(n):
        probs = torch.tensor(acc.row(depth_of[i] + 1, k) + [0.0])
        probs[-1] = 1 - probs.sum()
        draws.append(torch.multinomial(probs, trials, replacement=True, generator=gen))
    for argmax in torch.stack(draws, 1):  # [trials, n]
        path, _ = greedy_accept(tokens, parents, argmax)
        total += path.numel()
    want = expected_tau(acc, TreeShape("dynamic", depth, k, n))
    assert total / trials == pytest.approx(want, abs=0.04)  # ~4 standard errors


# ---------------------------------------------------------------- acceptance estimates


def test_acceptance_from_ranks_counts_only_accepted_paths():
    ranks = torch.tensor([[0, 1], [1, 3], [3, 0], [0, 0]])  # max_rank 2: 3 = not a candidate
    valid = torch.tensor([[True, True], [True, True], [True, True], [True, False]])
    acc = acceptance_from_ranks(ranks, valid, 2, "test", prior_weight=0.0)
    # depth 1: all 4 starts; depth 2: starts 0 and 1 (start 2 missed at depth 1, start 3 has no token)
    assert acc.probs == ((0.5, 0.25), (0.0, 0.5))
    assert acc.samples == (4, 2)
    shrunk = acceptance_from_ranks(ranks, valid, 2, "test", prior_weight=2.0)
    assert shrunk.probs[0] == pytest.approx((0.5, 0.25), abs=1e-6)  # the prior is the same frequencies
    every_start = (1 / 3, 1 / 3)  # depth 2 over all 3 valid starts: ranks 1, 3, 0
    assert shrunk.probs[1] == pytest.approx(((0 + 2 * every_start[0]) / 4, (1 + 2 * every_start[1]) / 4), abs=1e-6)


def test_acceptance_from_training_log():
    rows = [{"train_top1_acc_0": 0.1, "train_topk_acc_0": 0.2, "step": 1},
            {"eval_top1_acc_0": 0.4, "eval_topk_acc_0": 0.7, "eval_top1_acc_1": 0.3, "eval_topk_acc_1": 0.45,
             "step": 9},
            {"train_runtime": 3.0}]
    acc = acceptance_from_training_log(rows, top_k=4, source="log", max_rank=6)
    assert acc.probs[0] == pytest.approx((0.4, 0.1, 0.1, 0.1, 0, 0))
    assert acc.probs[1] == pytest.approx((0.3, 0.05, 0.05, 0.05, 0, 0)) and len(acc.probs) == 2
    assert "eval_" in acc.source and "step 9" in acc.source
    only_train = acceptance_from_training_log(rows[:1], top_k=2, source="log", max_rank=3)
    assert len(only_train.probs) == 1 and only_train.probs[0] == pytest.approx((0.1, 0.1, 0.0))
    with pytest.raises(ValueError, match="auto_acceptance measure"):
        acceptance_from_training_log([{"loss": 1.0}], 4, "log")


def test_acceptance_rejects_non_probabilities():
    with pytest.raises(ValueError, match="depth 2"):
        acc_of([0.5], [0.7, 0.6])
    with pytest.raises(ValueError, match="at least one depth"):
        Acceptance((), "x")


# ---------------------------------------------------------------- costs and search


def test_interpolate_and_monotone():
    pts = ((1, 1.0), (4, 2.5), (8, 4.5))
    assert [interpolate(pts, x) for x in (1, 2, 4, 6, 8, 12)] == pytest.approx([1.0, 1.5, 2.5, 3.5, 4.5, 6.5])
    assert interpolate(((3, 7.0),), 50) == 7.0
    assert monotone(((1, 1.0), (2, 3.0), (4, 2.0), (8, 4.0))) == ((1, 1.0), (2, 2.5), (4, 2.5), (8, 4.0))
    assert monotone(((2, 5.0), (1, 6.0), (4, 1.0))) == ((1, 4.0), (2, 4.0), (4, 4.0))
    costs = Costs(((1, 1.0), (2, 0.5)), ((1, 0.0),), ((1, 0.2), (2, 0.1)), ((1, 0.0),), ((1, 0.0),), 1.0).smoothed()
    assert costs.verify == ((1, 0.75), (2, 0.75))
    assert [x for x, _ in costs.draft_fixed] == [1, 2] and [y for _, y in costs.draft_fixed] == pytest.approx([0.15] * 2)
    assert Costs.from_json(json.loads(json.dumps(costs.to_json()))) == costs


def test_evaluate_hand_computed():
    costs = Costs(((1, 0.1), (4, 0.2)), ((1, 0.01), (5, 0.05)), ((1, 0.01), (2, 0.02)), ((1, 0.005), (2, 0.01)),
                  ((1, 0.001), (8, 0.008)), 0.1)
    c = evaluate(costs, acc_of([0.5]), TreeShape("chain", 3, 1, 4))
    assert c.tau == pytest.approx(1.875)
    # verify: layers for 4 tokens + the head on min(4, τ + 1) = 2.875 rows
    assert (c.verify_s, c.draft_s, c.update_s) == pytest.approx((0.2 + 0.02875, 0.02, 0.001875))
    assert c.tokens_per_s == pytest.approx(1.875 / 0.250625)
    assert c.speedup == pytest.approx(0.1 * 1.875 / 0.250625)
    one = evaluate(costs, acc_of([0.5]), TreeShape("chain", 1, 1, 2))
    assert one.verify_s == pytest.approx(interpolate(costs.verify, 2) + 0.02)  # min(N = 2, τ + 1 = 2.5) rows


def test_candidate_shapes():
    shapes = candidate_shapes(depths=(1, 3), top_ks=(1, 2), totals=(2, 4, 8, 16))
    assert TreeShape("chain", 1, 1, 2) in shapes and TreeShape("chain", 3, 1, 4) in shapes
    dyn = {(s.max_depth, s.total_tokens) for s in shapes if s.kind == "dynamic"}
    # depth < N <= 1 + k + (depth - 1) k^2: depth 1 -> N <= 3; depth 3 -> N <= 11
    assert dyn == {(1, 2), (3, 4), (3, 8)}
    with pytest.raises(ValueError, match="no tree shapes"):
        candidate_shapes(depths=(), top_ks=(1,))


def test_flat_base_cost_makes_the_biggest_tree_win():
    acc = acc_of([0.5, 0.15, 0.1, 0.05, 0.05, 0.03, 0.02, 0.02])
    flat = flat_costs([(n, 0.1) for n in (1, 2, 4, 8, 16, 32, 64)])
    ranked = search(flat, acc)
    best = ranked[0]
    assert best.shape.kind == "dynamic" and best.shape.total_tokens == 64
    assert best.tau == pytest.approx(max(c.tau for c in ranked), abs=1e-12)  # the largest E[τ] of all shapes
    assert best.tau > 1.2 * max(c.tau for c in ranked if c.shape.kind == "chain")
    steep = flat_costs([(1, 0.1), (2, 0.11), (4, 0.14), (8, 0.2), (16, 0.3), (32, 0.5), (64, 0.9)])
    assert search(steep, acc)[0].shape.total_tokens < 16  # the same draft, a CPU-like verify cost


def test_expensive_draft_and_low_acceptance_give_a_short_chain():
    acc = acc_of([0.15, 0.03, 0.02, 0.01])
    verify = [(1, 0.1), (2, 0.105), (4, 0.12), (8, 0.15), (16, 0.2), (32, 0.3), (64, 0.5)]
    costs = flat_costs(verify, draft_fixed=0.03, draft_step=0.06)
    ranked = search(costs, acc)
    assert ranked[0].shape == TreeShape("chain", 1, 1, 2)
    assert ranked[0].speedup < 1  # no shape helps such a draft
    assert [c.tokens_per_s for c in ranked] == sorted((c.tokens_per_s for c in ranked), reverse=True)
    # a good draft on the same device sizes up
    good = acc_of([0.8, 0.1, 0.05])
    assert search(flat_costs(verify, draft_fixed=0.005, draft_step=0.005), good)[0].shape.max_depth >= 3


# ---------------------------------------------------------------- measured acceptance on tiny models


def unrolled_logprobs(draft, z: torch.Tensor, feats: torch.Tensor, p: int, path: list[int]) -> torch.Tensor:
    """Reference: draft log-probs after root z[p] and `path` (base ids), by plain causal forwards."""
    ids = z[1: p + 1][None]  # committed pairs (z[i+1], feats[i]), i < p
    h_in = draft.input_from_base(ids, feats[None, :p])
    out = draft(ids, h_in, torch.arange(p)[None], None, None)[0, -1]
    for tok in path:
        node = draft.input_from_self(torch.tensor([[tok]]), out[None, None])
        ids, h_in = torch.cat([ids, torch.tensor([[tok]])], 1), torch.cat([h_in, node], 1)
        out = draft(ids, h_in, torch.arange(ids.shape[1])[None], None, None)[0, -1]
    return torch.log_softmax(draft.logits(out[None]).float(), -1)[0]


@pytest.fixture(scope="module")
def sharp_draft(llama_base):
    draft = build_draft(draft_modeling(), llama_base, seed=3).eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in draft.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5, generator=gen)
    return draft


def test_truth_ranks_equal_proposer_and_unrolled_draft(llama_base, sharp_draft, tok_a):
    base, draft, depth, R = llama_base, sharp_draft, 4, 40
    prompt = tok_a("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    layers = tuple(draft.cfg.feature_layers)
    feats = base.features(prompt, layers).features[0]
    proposer = DraftProposer(draft, TreeSpec("chain", depth))
    proposer.start(prompt[0], 7, feats)
    chain = proposer.propose().tokens.tolist()  # [root 7, the draft's own top-1 chain]
    answer = chain + [5, 9, 11]
    ranks, valid = calibrate.truth_ranks(base, draft, prompt, answer, depth=depth, max_rank=R)
    assert ranks.shape == valid.shape == (len(answer) - 1, depth)
    assert ranks[0].tolist() == [0] * depth  # the proposer's own chain ranks first at every depth
    assert valid[:, 0].all() and not valid[-1, 1:].any()

    z = torch.cat([prompt[0], torch.tensor(answer)])
    zfeats = base.features(z[None], layers).features[0]
    n, checked = prompt.shape[1], 0
    for j in range(len(answer) - 1):
        p = n + j
        for k in range(depth):
            if not valid[j, k]:
                continue
            logp = unrolled_logprobs(draft, z, zfeats, p, z[p + 1: p + 1 + k].tolist())
            order = torch.sort(logp, descending=True, stable=True).indices[:R]
            cand = draft.to_base_ids(order).tolist()
            truth = int(z[p + 1 + k])
            assert int(ranks[j, k]) == (cand.index(truth) if truth in cand else R), (j, k)
            checked += 1
    assert checked == int(valid.sum()) and ((ranks > 0) & (ranks < R)).sum() >= 3  # not only top-1 hits


def test_measured_costs_have_every_point(llama_base, sharp_draft):
    costs = calibrate.measure_costs(llama_base, sharp_draft, repeats=1)
    assert [n for n, _ in costs.verify] == list(calibrate.VERIFY_SIZES)
    assert [r for r, _ in costs.head] == list(calibrate.HEAD_ROWS) and all(s > 0 for _, s in costs.head)
    assert [k for k, _ in costs.draft_fixed] == [k for k, _ in costs.draft_step] == list(calibrate.DRAFT_TOP_KS)
    assert [m for m, _ in costs.update] == list(calibrate.UPDATE_SIZES)
    assert all(s > 0 for _, s in costs.verify + costs.draft_fixed + costs.update) and costs.base_step > 0
    assert all(s >= 0 for _, s in costs.draft_step)


# ---------------------------------------------------------------- the inference CLI


def run_main(args):
    return run_cli(main, "specforge_het.inference", argv=args)


def test_cli_tree_auto_keeps_outputs_identical(base_dirs, cache_home, tmp_path, capsys):
    outfile = tmp_path / "out.jsonl"
    args = ["--modeling.base_model", base_dirs["llama"], "--modeling.draft_family", "qwen3",
            "--modeling.draft_hidden_size", "48", "--modeling.draft_vocab_size", "100",
            "--inference.tree", "auto", "--inference.compare", "--inference.max_new_tokens", "10",
            "--prompt", "Tell me about the quick brown fox.", "--outfile", str(outfile)]
    run_main(args)
    out = capsys.readouterr().out
    assert "identical outputs: 1/1" in out and "tree auto chose:" in out and "measured in" in out
    line = json.loads(outfile.read_text().splitlines()[-1])
    auto = line["summary"]["tree_auto"]
    chosen, cands = auto["chosen"], auto["candidates"]
    assert chosen == cands[0] and chosen["tree"] in ("chain", "dynamic")
    speeds = [c["predicted_tokens_per_s"] for c in cands]
    assert speeds == sorted(speeds, reverse=True) and len(cands) > 1
    assert auto["acceptance"]["source"].startswith("measured on 3 calibration prompts")
    assert line["config"]["inference"]["tree"] == "auto"
    (cached,) = cache_home.glob("*.json")
    assert auto["cache_file"] == str(cached) and auto["measured_s"] > 0
    key = json.loads(cached.read_text())["key"]
    assert key["threads"] == torch.get_num_threads() and key["dtype"] == "torch.float32" and "untrained" in key["draft"]

    run_main(args)  # the second run reads the cache, chooses the same shape
    out = capsys.readouterr().out
    assert "from the cache" in out and "identical outputs: 1/1" in out
    again = json.loads(outfile.read_text().splitlines()[-1])["summary"]["tree_auto"]
    assert again["chosen"] == chosen and again["measured_s"] is None
    run_main([*args, "--inference.auto_remeasure"])
    assert "measured in" in capsys.readouterr().out and len(list(cache_home.glob("*.json"))) == 1


def test_training_log_acceptance_raises_config_error(tmp_path):
    """Library code raises ConfigError (the command line reports it); it never exits the process itself."""
    from specforge_het.errors import ConfigError
    from specforge_het.inference.auto_tree import training_log_acceptance

    with pytest.raises(ConfigError, match="--modeling.draft_path"):
        training_log_acceptance("")
    with pytest.raises(ConfigError, match="auto_acceptance measure"):
        training_log_acceptance(str(tmp_path))


def test_cli_tree_auto_from_training_log(bases, base_dirs, cache_home, tmp_path, capsys):
    draft = build_draft(draft_modeling(), bases["llama"], seed=5).eval()
    folder = save_draft(draft, tmp_path / "draft")
    args = ["--modeling.base_model", base_dirs["llama"], "--modeling.draft_path", str(folder),
            "--inference.tree", "auto", "--inference.auto_acceptance", "training_log", "--inference.compare",
            "--inference.max_new_tokens", "8", "--inference.warmup", "false", "--prompt", "Hello there"]
    with pytest.raises(SystemExit) as err:  # auto_tree raises ConfigError; the command line turns it into exit status 2
        run_main(args)
    folded = re.sub(r"\s", "", capsys.readouterr().err)  # rich folds long paths at the terminal's width
    assert err.value.code == 2 and "training_log.jsonnotfound" in folded
    log = [{"eval_top1_acc_0": 0.9, "eval_topk_acc_0": 0.95, "eval_top1_acc_1": 0.9, "eval_topk_acc_1": 0.95}]
    (folder / "training_log.json").write_text(json.dumps(log))
    run_main(args)
    assert "identical outputs: 1/1" in capsys.readouterr().out
    (cached,) = cache_home.glob("*.json")
    data = json.loads(cached.read_text())
    assert data["acceptance"]["probs"][0][0] == 0.9 and data["acceptance"]["source"].startswith(str(folder))
    assert data["key"]["acceptance"]["source"] == "training_log"
    assert data["key"]["draft"]["path"].endswith("model.safetensors")


def test_cli_tree_auto_base_only_measures_nothing(base_dirs, cache_home, capsys):
    run_main(["--modeling.base_model", base_dirs["llama"], "--inference.tree", "auto", "--inference.target_model_only",
              "--inference.max_new_tokens", "4", "--inference.warmup", "false", "--prompt", "Hi"])
    assert "tree auto chose" not in capsys.readouterr().out and not cache_home.exists()
