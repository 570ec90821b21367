"""The draft side of the decoder: any DraftModel behind the Proposer protocol (inference/protocol.py).

Alignment (as in EAGLE): draft position i holds the pair (token_{i+1}, base feature_i), and
its output predicts token_{i+2}. After each verify the decoder calls
`update(next_tokens=[accepted..., bonus], features=[features of root, accepted...])`.
`propose()` grows a draft tree below the current root (the last token handed to `update`)
and returns it in base ids, as a `Proposal` of deterministic candidates (the draft's top-k
children, no `draft_probs`). The draft's KV cache keeps only committed pairs between calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specforge_het.inference.fast_paths import FastPaths
from specforge_het.inference.protocol import Proposal
from specforge_het.inference.tree import (
    StepFn,
    build_dynamic_tree,
    chain_parents,
    stable_topk,
    stable_topk_on_device,
    static_parents,
    static_tree_spec,
)
from specforge_het.models.cache import HFCache


@dataclass(frozen=True)
class TreeSpec:
    kind: str = "dynamic"  # chain | static | dynamic
    max_depth: int = 5
    top_k: int = 4
    total_tokens: int = 16
    static_tree: str = "eagle1_small"

    @classmethod
    def from_config(cls, inf) -> TreeSpec:
        return cls(inf.tree, inf.max_depth, inf.top_k, inf.total_tokens, inf.static_tree)

    def depth(self) -> int:
        """Deepest node below the root of any tree of this spec."""
        if self.kind == "static":
            return max(len(p) for p in static_tree_spec(self.static_tree))
        return self.max_depth

    def fixed_shape(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(parents [N], ranks [N]) of a chain or static tree: node i is the ranks[i]-th best child of its parent."""
        if self.kind == "chain":
            parents = chain_parents(self.max_depth)
            return parents, torch.zeros_like(parents)
        if self.kind == "static":
            return static_parents(static_tree_spec(self.static_tree))
        raise ValueError(f"a {self.kind} tree has no fixed shape")


def grow_fixed_tree(step: StepFn, root_logp: torch.Tensor, parents: torch.Tensor, ranks: torch.Tensor,
                    topk=stable_topk) -> torch.Tensor:
    """Token ids of a chain or static tree (`TreeSpec.fixed_shape`): node i is the ranks[i]-th best
    child of its parent. root_logp [V] are the root's child log-probs; `step(ids [K], parent_rows [K])
    -> child log-probs [K, V]` feeds the nodes that have children, level by level, their parents
    numbered in feeding order (-1 = the root), as in `build_dynamic_tree`. -> ids [N - 1] of nodes 1..N-1."""
    par, ranks = parents.tolist(), ranks.tolist()
    n = len(par)
    draft_ids = torch.zeros(n, dtype=torch.long, device=root_logp.device)
    width = max(ranks[1:], default=0) + 1  # children needed per node
    sorted_children = {0: topk(root_logp, width)[1]}  # node -> its best child tokens, best first
    row_of, n_rows = {0: -1}, 0
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[par[i]] + 1
    for level in range(1, max(depth) + 1):
        nodes = [i for i in range(1, n) if depth[i] == level]
        for i in nodes:
            draft_ids[i] = sorted_children[par[i]][ranks[i]]
        feed = [i for i in nodes if i in par]  # nodes with children
        if feed:
            logp = step(draft_ids[feed], torch.tensor([row_of[par[i]] for i in feed]))
            children = topk(logp, width)[1]  # [len(feed), width]
            for j, i in enumerate(feed):
                row_of[i] = n_rows + j
                sorted_children[i] = children[j]
            n_rows += len(feed)
    return draft_ids[1:]


class DraftProposer:
    def __init__(self, draft, tree: TreeSpec):
        if tree.kind not in ("chain", "static", "dynamic"):
            raise ValueError(f"tree kind '{tree.kind}' is not one of chain, static, dynamic")
        self.draft, self.tree = draft, tree
        self.feature_layers = tuple(draft.cfg.feature_layers)
        if tree.kind != "dynamic":
            self._static = tree.fixed_shape()  # (parents, ranks)
        self.use_fast_paths(FastPaths.resolve("auto", self._weight.device))  # until a decoder hands over its own
        self.reset()

    def reset(self) -> None:
        self.cache = self.draft.new_cache()
        self.committed = 0  # pairs in the draft cache
        self.root_ids: torch.Tensor | None = None  # [1] the last token handed to `update` (the next root)
        self.root_hidden: torch.Tensor | None = None  # [Hd] output at the last committed pair

    @property
    def _weight(self) -> torch.Tensor:
        """The draft's input adapter weight: the dtype and device the draft computes in (the one read of
        a draft internal outside the DraftModel interface)."""
        return self.draft.fc.weight

    @property
    def root_token(self) -> int:
        """The root of the next tree, read on the host (the decoder itself never needs it there)."""
        return -1 if self.root_ids is None else int(self.root_ids[0])

    def fast_path_modules(self) -> tuple:
        """The modules the decoder's fast paths may patch while it generates (inference/fast_paths.py)."""
        return (self.draft,)

    def use_fast_paths(self, fast: FastPaths) -> None:
        """The decoder's strategy: on the device, trees are built without host reads (same trees)."""
        self.on_device = fast.on_device
        self._topk = stable_topk_on_device if fast.on_device else stable_topk

    def depth(self) -> int:
        """Deepest draft token below the root."""
        return self.tree.depth()

    # ------------------------------------------------------------ decoder interface
    def start(self, prompt_ids: torch.Tensor, root: int, features: torch.Tensor) -> None:
        """After the base prefill: prompt_ids [n], the first new token, features [n, F*Hb] of the prompt."""
        self.reset()
        self.update(torch.cat([prompt_ids[1:], prompt_ids.new_tensor([root])]), features)

    @torch.no_grad()
    def update(self, next_tokens: torch.Tensor, features: torch.Tensor) -> None:
        """Append committed pairs. next_tokens [m] base ids, features [m, F*Hb]."""
        d = self.draft
        m = next_tokens.shape[0]
        ids = next_tokens[None]
        hidden_in = d.input_from_base(ids, features[None].to(self._weight.dtype))
        positions = torch.arange(self.committed, self.committed + m, device=ids.device)
        mask = self._mask(m, self.committed, torch.ones(m, m, dtype=torch.bool, device=ids.device).tril())
        out = d(ids, hidden_in, positions[None], mask, self.cache)
        self.committed += m
        self.root_ids, self.root_hidden = next_tokens[-1:], out[0, -1]

    @torch.no_grad()
    def propose(self) -> Proposal:
        """Draft tree below the root: tokens [N] base ids (tokens[0] = root), parents [N]; deterministic candidates."""
        root_logp = self._logprobs(self.root_hidden[None])[0]  # [Vd]
        self._new_rows()
        try:
            if self.tree.kind == "dynamic":
                t = self.tree
                draft_ids, parents, _ = build_dynamic_tree(self._step, root_logp, t.top_k, t.max_depth, t.total_tokens,
                                                           on_device=self.on_device)
                draft_ids = draft_ids[1:]
            else:
                parents, ranks = self._static  # on the host: the shape is read there, not from the device
                draft_ids = grow_fixed_tree(self._step, root_logp, parents, ranks, self._topk)
                parents = parents.to(root_logp.device)
        finally:
            self.cache.crop(self.committed)
        return Proposal(torch.cat([self.root_ids.to(parents.device), self.draft.to_base_ids(draft_ids)]), parents)

    # ------------------------------------------------------------ internals

    def _new_rows(self) -> None:
        """Empty tables of fed tree rows, row 0 standing for the root: draft outputs [R+1, Hd],
        depths [R+1], ancestor-or-self among the fed rows [R+1, R] (the root's row empty)."""
        dev = self.root_hidden.device
        self._rows_hidden = self.root_hidden[None]
        self._rows_depth = torch.zeros(1, dtype=torch.long, device=dev)
        self._rows_anc = torch.zeros(1, 0, dtype=torch.bool, device=dev)

    def _logprobs(self, hidden_out: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.draft.logits(hidden_out).float(), dim=-1)

    def _mask(self, s: int, past: int, local: torch.Tensor) -> torch.Tensor:
        """Mask [1, 1, s, past + local_cols]: every committed pair + the allowed new/tree columns, in the
        format the draft cache's forward attends with (`Cache.attention_mask`)."""
        allowed = torch.ones(s, past + local.shape[1], dtype=torch.bool, device=local.device)
        allowed[:, past:] = local
        return self.cache.attention_mask(allowed, self._weight.dtype)

    def _step(self, draft_ids: torch.Tensor, parent_rows: torch.Tensor) -> torch.Tensor:
        """Feed K tree nodes (children of fed rows `parent_rows`, -1 = root); return their child log-probs [K, Vd].

        Everything stays on the device: the parents' outputs, depths and ancestor rows are gathered
        from the fed-row tables by index (row p + 1; row 0 is the root)."""
        d, k = self.draft, draft_ids.shape[0]
        n_prev = self._rows_anc.shape[1]
        rows = parent_rows.to(self._rows_depth.device) + 1  # [K]
        depth = self._rows_depth[rows] + 1  # [K], root children 1
        own = torch.eye(k, dtype=torch.bool, device=rows.device)
        anc = torch.cat([self._rows_anc[rows], own], dim=1)  # [K, n_prev + K]
        base_ids = d.to_base_ids(draft_ids)[None]
        hidden_in = d.input_from_self(base_ids, self._rows_hidden[rows][None])
        positions = depth + (self.committed - 1)
        out = d(base_ids, hidden_in, positions[None], self._mask(k, self.committed, anc), self.cache)[0]
        self._rows_hidden = torch.cat([self._rows_hidden, out])
        self._rows_depth = torch.cat([self._rows_depth, depth])
        self._rows_anc = torch.cat([torch.cat([self._rows_anc, own.new_zeros(n_prev + 1, k)], dim=1), anc])
        return self._logprobs(out)

    # ------------------------------------------------------------ calibration (inference/calibrate.py)
    @torch.no_grad()
    def true_path_ranks(self, seq: torch.Tensor, features: torch.Tensor, first: int, depth: int,
                        max_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For every root seq[p], first <= p < S - 1, the ranks of the next `depth` true tokens among this
        draft's top `max_rank` children (max_rank = not among them), the draft fed the true path.

        What this proposer's tree steps compute along the true path at every root, batched: one draft
        forward per depth over all roots, each attending its own committed prefix and chain (its own
        cache, not the proposer's). seq [S] base ids, features [S, F*Hb] the base's at seq.
        -> (ranks [J, depth], valid [J, depth]) on the host, J = S - 1 - first.
        """
        d, device = self.draft, seq.device
        s, m, dtype = seq.shape[0], seq.shape[0] - 1, self._weight.dtype  # m committed pairs (seq[i+1], features[i])
        cache = HFCache()
        hidden_in = d.input_from_base(seq[None, 1:], features[None, :m].to(dtype))
        causal = cache.attention_mask(torch.ones(m, m, dtype=torch.bool, device=device).tril(), dtype)
        h = d(seq[None, 1:], hidden_in, torch.arange(m, device=device)[None], causal, cache)[0]
        roots = torch.arange(first, s - 1, device=device)  # root seq[p] has pairs 0..p-1 committed
        j = roots.shape[0]
        ranks = torch.full((j, depth), max_rank, dtype=torch.long, device=device)
        valid = (roots[:, None] + torch.arange(1, depth + 1, device=device)[None]) <= s - 1  # [J, D]
        truth = lambda k: seq[(roots + k).clamp_max(s - 1)]  # noqa: E731  true token at depth k
        ranks[:, 0] = self._ranks(h[roots - 1], truth(1), max_rank)
        parent = h[roots - 1]
        committed = torch.arange(m, device=device)[None] < roots[:, None]  # [J, m]
        own = torch.eye(j, dtype=torch.bool, device=device)
        for k in range(1, depth):  # feed depth-k nodes, read depth-(k+1) ranks
            allowed = cache.attention_mask(torch.cat([committed] + [own] * k, dim=1), dtype)  # [1, 1, J, m + J*k]
            feed = truth(k)
            hidden_in = d.input_from_self(feed[None], parent[None])
            out = d(feed[None], hidden_in, (roots + k - 1)[None], allowed, cache)[0]  # [J, Hd]
            ranks[:, k] = self._ranks(out, truth(k + 1), max_rank)
            parent = out
        return ranks.cpu(), valid.cpu()

    def _ranks(self, hidden_out: torch.Tensor, truth: torch.Tensor, max_rank: int) -> torch.Tensor:
        """Rank of `truth` [J] (base ids) among the top max_rank children from hidden_out [J, Hd], in the
        order the trees rank them (max_rank = not among them). -> [J]"""
        _, rows = stable_topk(self._logprobs(hidden_out), max_rank)  # [J, R]
        match = self.draft.to_base_ids(rows) == truth[:, None]
        return torch.where(match.any(-1), match.int().argmax(-1), torch.full_like(truth, max_rank))

