"""The prompt-lookup branch in the cost model (inference/lookup_model.py): its stats along true continuations,
E[τ] of a tree with the branch merged in, the verify it adds, and `--inference.tree auto` with
`--inference.lookup_tokens` end to end (outputs identical to base-only)."""

from __future__ import annotations

import json

import pytest
from test_cost_model import acc_of, flat_costs, run_main

from specforge_het.inference.cost_model import (
    TreeShape,
    candidate_shapes,
    dynamic_tree_nodes,
    expected_tau,
    expected_taus,
    search,
)
from specforge_het.inference.lookup_model import LookupStats, depth_mass, lookup_stats, tau_with_lookup
from specforge_het.inference.tree import layout_from_parents

ACC = acc_of((0.6, 0.15, 0.05, 0.02), (0.55, 0.15, 0.05, 0.02), (0.5, 0.1, 0.05, 0.02))


def stats(reach, proposed=1.0, mean_tokens=10.0) -> LookupStats:
    return LookupStats(tuple(reach), proposed, mean_tokens, 100, "synthetic")


def test_lookup_stats_hand_computed():
    # prompt 5 6 7 8, answer 5 6 7 1; n-gram <= 2, 2 tokens. Roots (the answer's first three tokens):
    #   5: [5] matched at 0 -> branch 6 7; truth 6 7 -> both hit
    #   6: [5 6] matched at 0 -> branch 7 8; truth 7 1 -> first hits
    #   7: [6 7] matched at 1 -> branch 8 5; truth 1 -> miss (one true token left)
    s = lookup_stats([([5, 6, 7, 8], [5, 6, 7, 1])], max_ngram=2, num_tokens=2, source="t")
    assert s.reach == (pytest.approx(2 / 3), pytest.approx(1 / 2))
    assert (s.proposed, s.mean_tokens, s.positions) == (1.0, 2.0, 3)
    none = lookup_stats([([1, 2], [3, 4, 5])], max_ngram=2, num_tokens=3, source="t")  # nothing repeats
    assert none.reach == (0.0, 0.0, 0.0) and none.proposed == 0.0
    with pytest.raises(ValueError, match="2\\+ tokens"):
        lookup_stats([([1], [2])], 2, 2, "t")
    assert LookupStats.from_json(s.to_json()) == s


def test_tau_with_lookup_hand_computed_and_without_the_branch_unchanged():
    # a chain of 2 with a[.][0] = 0.5: a_1 = .5, a_2 = .25; branch reach .4 .2 .1
    chain = expected_taus(acc_of((0.5,)), [TreeShape("chain", 2, 1, 3)], stats((0.4, 0.2, 0.1)))[0]
    assert chain == pytest.approx(1 + (0.5 + 0.4 - 0.2) + (0.25 + 0.2 - 0.05) + 0.1)
    shapes = candidate_shapes()
    zero = stats((0.0,) * 10, proposed=0.0, mean_tokens=0.0)
    assert expected_taus(ACC, shapes, zero) == pytest.approx(expected_taus(ACC, shapes), abs=1e-12)
    assert tau_with_lookup([0.5, 0.25], None) == pytest.approx(1.75)
    with_branch = expected_taus(ACC, shapes, stats((0.3, 0.2, 0.1)))
    assert all(w > t for w, t in zip(with_branch, expected_taus(ACC, shapes)))


def test_depth_mass_of_a_dynamic_tree_sums_to_its_tau():
    probs, depths = dynamic_tree_nodes(ACC, 3, 3, 10)
    mass = depth_mass(probs, depths, 3)
    assert sum(mass) == pytest.approx(expected_tau(ACC, TreeShape("dynamic", 3, 3, 10)) - 1)
    assert mass[0] == pytest.approx(0.6 + 0.15 + 0.05)  # all three root children kept
    assert mass == sorted(mass, reverse=True)
    assert layout_from_parents(__import__("torch").tensor([-1, 0, 0, 1, 3])).depth.tolist() == [0, 1, 1, 2, 3]


def test_batched_taus_with_lookup_equal_one_tree_build_per_shape():
    """The prefix shortcut (the N-token tree = the N - 1 likeliest nodes of the largest) also holds per depth."""
    lookup = stats((0.5, 0.3, 0.2, 0.1))
    shapes = [s for s in candidate_shapes(depths=(1, 2, 4), top_ks=(1, 2, 4)) if s.total_tokens <= 24]
    batched = expected_taus(ACC, shapes, lookup)
    for shape, tau in zip(shapes, batched):
        if shape.kind == "chain":
            continue
        probs, depths = dynamic_tree_nodes(ACC, shape.max_depth, shape.top_k, shape.total_tokens)
        assert tau == pytest.approx(tau_with_lookup(depth_mass(probs, depths, shape.max_depth), lookup)), shape


def test_the_branch_adds_its_tokens_to_the_verify_and_steers_the_search():
    costs = flat_costs(((1, 0.05), (4, 0.055), (16, 0.08), (64, 0.2)), draft_fixed=0.004, draft_step=0.003)
    shape = TreeShape("dynamic", 2, 2, 6)
    plain = costs.step(shape, 2.0)[0]
    half = costs.step(shape, 2.0, stats((0.2,), proposed=0.5, mean_tokens=10.0))[0]
    full = costs.step(shape, 2.0, stats((0.2,), proposed=1.0, mean_tokens=10.0))[0]
    assert plain < half < full and half == pytest.approx((plain + full) / 2)
    alone = search(costs, ACC)[0]
    # a branch that nearly always matches 10 tokens: a bigger draft tree only adds verify cost
    merged = search(costs, ACC, lookup=stats((0.9,) * 10))[0]
    assert alone.shape.total_tokens > merged.shape.total_tokens and merged.tau > alone.tau


def test_cli_tree_auto_with_lookup_scores_the_branch_and_keeps_outputs_identical(base_dirs, cache_home, tmp_path,
                                                                                 capsys):
    outfile = tmp_path / "out.jsonl"

    def cli(lookup_tokens: int) -> list[str]:
        return ["--modeling.base_model", base_dirs["llama"], "--modeling.draft_family", "qwen3",
                "--modeling.draft_hidden_size", "48", "--modeling.draft_vocab_size", "100",
                "--inference.tree", "auto", "--inference.lookup_tokens", str(lookup_tokens), "--inference.compare",
                "--inference.max_new_tokens", "10", "--prompt", "Tell me about the quick brown fox.",
                "--outfile", str(outfile)]

    args = cli(4)
    run_main(args)
    out = capsys.readouterr().out
    assert "identical outputs: 1/1" in out and "prompt lookup · lookup 4 (n-gram <= 3)" in out
    auto = json.loads(outfile.read_text().splitlines()[-1])["summary"]["tree_auto"]
    lookup = auto["lookup"]
    assert len(lookup["reach"]) == 4 and lookup["positions"] > 0
    (cached,) = cache_home.glob("*.json")
    entries = json.loads(cached.read_text())["lookup"]
    assert len(entries) == 1 and list(entries.values())[0] == lookup
    run_main(args)  # from the cache, lookup stats included: the same choice
    out = capsys.readouterr().out
    assert "from the cache" in out and "identical outputs: 1/1" in out
    again = json.loads(outfile.read_text().splitlines()[-1])["summary"]["tree_auto"]
    assert again["chosen"] == auto["chosen"] and again["lookup"] == lookup and again["measured_s"] is None
    run_main(cli(2))  # other settings: measured once more, same cache file
    capsys.readouterr()
    assert len(json.loads(cached.read_text())["lookup"]) == 2
