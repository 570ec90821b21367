"""A standalone draft LM behind the Proposer protocol: classic speculative decoding (Leviathan et al.;
Chen et al.) with trees, for any small HF causal LM of any family and any tokenizer, no base features.

The draft reads its own tokens, re-spelled from the committed base tokens (context.py), and proposes
over the vocabulary it shares with the base (vocab.py): one tree node is one draft token and one base
token. `propose()` grows an EAGLE-2 dynamic tree (inference/dynamic_tree.py) below the root (the last
committed base token) and returns it in base ids.

* greedy (temperature 0): the draft's top-k children by log-probability, deterministic candidates,
  no `draft_probs`;
* sampling (temperature > 0 and a generator): every fed node's children are drawn without replacement
  from q = softmax(draft logits / temperature) over the shared vocabulary, and the tree is scored by
  draw rank (draws.py), so the children kept are the first draws, in draw order; `draft_probs` [N, V_base]
  carries q scattered onto base ids (inference/protocol.py), for SpecInfer's exact rule.

The tree is fed to the draft level by level through BaseModel's forward (tree masks and positions for
every family, sliding windows included). Each level feeds only its new nodes: the nodes fed before stay
in the draft cache, and `past_mask` lets a new node see the committed entries and its own ancestors
among them (an ancestor table of the fed rows, kept on the device as the EAGLE proposer keeps its own).
The cache is rolled back to the committed draft ids after the tree.
"""

from __future__ import annotations

import torch

from specforge_het.algorithms.standalone.context import DraftContext
from specforge_het.algorithms.standalone.draws import draw_order, rank_scores
from specforge_het.algorithms.standalone.vocab import SharedVocab, shared_head
from specforge_het.inference.proposer import TreeSpec
from specforge_het.inference.protocol import Proposal
from specforge_het.inference.tree import build_dynamic_tree
from specforge_het.models.base import BaseModel


def _tree_params(tree: TreeSpec) -> TreeSpec:
    """A chain is the dynamic tree of one child per node."""
    if tree.kind == "chain":
        return TreeSpec("dynamic", max_depth=tree.max_depth, top_k=1, total_tokens=tree.max_depth + 1)
    if tree.kind != "dynamic":
        raise ValueError(f"a standalone draft grows chain or dynamic trees, not '{tree.kind}'")
    return tree


class StandaloneProposer:
    """`draft` a BaseModel (with its tokenizer), the base's tokenizer and LM-head rows (V_base)."""

    feature_layers: tuple[int, ...] = ()

    def __init__(self, draft: BaseModel, base_tokenizer, base_vocab_size: int, tree: TreeSpec | None = None,
                 temperature: float = 0.0, generator: torch.Generator | None = None, vocab: SharedVocab | None = None):
        if temperature > 0 and generator is None:
            raise ValueError("a sampling standalone draft needs an explicit torch.Generator")
        self.draft, self.tree = draft, _tree_params(tree or TreeSpec())
        self.temperature, self.generator = float(temperature), generator
        vocab = vocab or SharedVocab.build(base_tokenizer, draft.tokenizer, base_vocab_size, draft.vocab_size)
        self.vocab = vocab.to(draft.device)
        self.top_k = min(self.tree.top_k, self.vocab.size)
        # the LM head's shared rows only (none when every row is shared: the draft's own head is that)
        self.head = shared_head(draft.lm_head, self.vocab.draft_ids) if self.vocab.size < draft.vocab_size else None
        self.context = DraftContext(draft, base_tokenizer, self.vocab.identity)
        self._device = draft.device

    @classmethod
    def for_base(cls, base: BaseModel, draft: BaseModel, tree: TreeSpec | None = None, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> StandaloneProposer:
        return cls(draft, base.tokenizer, base.vocab_size, tree, temperature, generator)

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    @property
    def draft_ids(self) -> list[int]:
        """The draft's context: its spelling of the committed base tokens (one draft cache entry each)."""
        return self.context.draft_ids

    def depth(self) -> int:
        return self.tree.max_depth

    def fast_path_modules(self) -> tuple:
        return (self.draft.model,) if self.head is None else (self.draft.model, self.head)

    # ------------------------------------------------------------ decoder interface
    def start(self, prompt_ids: torch.Tensor, root: int, features=None) -> None:
        self._device = prompt_ids.device
        self.context.reset(prompt_ids.tolist() + [int(root)])

    def update(self, next_tokens: torch.Tensor, features=None) -> None:
        self.context.extend(next_tokens.tolist())

    @torch.no_grad()
    def propose(self) -> Proposal:
        """A tree below the root: tokens [N] base ids (tokens[0] = the root), parents [N], q [N, V_base] when sampling."""
        self._new_rows()
        t = self.tree
        try:
            root_scores = self._child_scores(self.context.root_hidden[None])[0]
            tokens, parents, scores = build_dynamic_tree(self._step, root_scores, self.top_k, t.max_depth,
                                                         t.total_tokens)
        finally:
            self.context.rollback()
        tokens, parents = _drop_impossible(tokens, parents, scores)
        base_ids = torch.cat([torch.tensor([self.context.base_ids[-1]], device=self._device),
                              self.vocab.base_ids[tokens[1:]].to(self._device)])
        probs = self._draft_probs(tokens, parents) if self.sampling else None
        return Proposal(base_ids, parents.to(self._device), probs)

    # ------------------------------------------------------------ internals
    def _new_rows(self) -> None:
        """Empty tables of fed tree rows, row 0 standing for the root: depths [R+1], positions [R], and
        ancestor-or-self among the fed rows [R+1, R] (the root's row empty); fed row r is cache entry
        `len(context.draft_ids) + r`. Sampling also keeps (parent row, shared index) of each row and its q."""
        dev = self.draft.device
        self._depth = torch.zeros(1, dtype=torch.long, device=dev)
        self._positions = torch.zeros(0, dtype=torch.long, device=dev)
        self._anc = torch.zeros(1, 0, dtype=torch.bool, device=dev)
        self._rows: list[tuple[int, int]] = []  # (parent row or -1 for the root, shared index), sampling only
        self._q: list[torch.Tensor] = []  # q [S] of the root and of each fed row (sampling)

    def _shared_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft final hidden states [K, H] -> logits over the shared vocabulary [K, S] (softcapped as `head` does)."""
        if self.head is None:
            return self.vocab.restrict(self.draft.head(hidden))
        cap = getattr(self.draft.config, "final_logit_softcapping", None)
        logits = self.head(hidden)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _child_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft hidden states [K, H] of fed rows -> their children's scores over the shared vocabulary [K, S]:
        log-probabilities (greedy), or rank scores of children drawn from q (sampling; q kept per row)."""
        shared = self._shared_logits(hidden).float()
        if not self.sampling:
            return torch.log_softmax(shared, dim=-1)
        rows = []
        for q in torch.softmax(shared / self.temperature, dim=-1):
            self._q.append(q)
            rows.append(rank_scores(q, draw_order(q, self.top_k, self.generator)))
        return torch.stack(rows)

    def _step(self, tokens: torch.Tensor, parent_rows: torch.Tensor) -> torch.Tensor:
        """Feed K tree nodes (shared indices, children of fed rows `parent_rows`, -1 = the root); return their
        children's scores [K, S]. Rows are numbered in feeding order, as `build_dynamic_tree` numbers them;
        the new nodes alone are fed, seeing the committed entries and their fed ancestors in the cache."""
        dev, k, n_prev = self.draft.device, tokens.shape[0], self._anc.shape[1]
        m = len(self.context.draft_ids)  # committed entries (the fed rows follow them in the cache)
        if self.sampling:
            self._rows += [(int(p), int(t)) for t, p in zip(tokens.tolist(), parent_rows.tolist())]
        rows = parent_rows.to(dev) + 1  # [K], row 0 = the root
        depth = self._depth[rows] + 1  # [K], root children 1
        positions = depth + (m - 1)
        own = torch.eye(k, dtype=torch.bool, device=dev)
        seen = torch.cat([torch.ones(k, m, dtype=torch.bool, device=dev), self._anc[rows]], dim=1)  # [K, m + n_prev]
        past_pos = None
        if self.draft.sliding_window is not None:  # a window needs the fed rows' true positions
            past_pos = torch.cat([torch.arange(m, device=dev), self._positions])
        out = self.draft(self.vocab.draft_ids[tokens.to(dev)][None], self.context.cache, positions, own,
                         logits="none", past_mask=seen, past_positions=past_pos)
        self._depth = torch.cat([self._depth, depth])
        self._positions = torch.cat([self._positions, positions])
        anc = torch.cat([self._anc[rows], own], dim=1)  # [K, n_prev + K]
        self._anc = torch.cat([torch.cat([self._anc, own.new_zeros(n_prev + 1, k)], dim=1), anc])
        return self._child_scores(out.hidden[0])

    def _draft_probs(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """q [N, V_base]: row i the q node i's children were drawn from (its fed row's), uniform for leaves."""
        fed = {key: r for r, key in enumerate(self._rows)}  # (parent row, token) -> row
        tok, par = tokens.tolist(), parents.tolist()
        node_row = [-1] * len(tok)  # the root's q is the first one kept
        uniform = torch.full_like(self._q[0], 1.0 / self._q[0].shape[0])
        rows = [self._q[0]]
        for i in range(1, len(tok)):
            node_row[i] = fed.get((node_row[par[i]], tok[i]), -2) if node_row[par[i]] != -2 else -2
            rows.append(self._q[node_row[i] + 1] if node_row[i] >= 0 else uniform)
        return self.vocab.to_base_probs(torch.stack(rows)).to(self._device)


def _drop_impossible(tokens: torch.Tensor, parents: torch.Tensor, scores: torch.Tensor):
    """Drop nodes scored -inf (slots past the support of q, and their subtrees) -> (tokens [N'], parents [N'])."""
    keep = torch.isfinite(scores) | (torch.arange(scores.shape[0], device=scores.device) == 0)
    if bool(keep.all()):
        return tokens, parents
    idx = torch.nonzero(keep).flatten()
    new_index = torch.full_like(parents, -1)
    new_index[idx] = torch.arange(idx.shape[0], device=idx.device)
    kept_parents = parents[idx]
    return tokens[idx], torch.where(kept_parents < 0, kept_parents, new_index[kept_parents.clamp_min(0)])
