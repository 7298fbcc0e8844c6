"""Constrained decoding of the answer "<emotion> <score>": the trie of valid answers, the trees of it that one LLM
pass feeds (with a tree attention mask), the logits of the tokens those trees choose among, and the prediction
built from a decoded answer.

`EGMFModel.score` feeds, on the prompt's KV cache, the whole tree of valid continuations below the chosen first
answer token in one pass instead of one token per decoding step, so an answer costs two passes whatever its length
(the prompt pass may also carry some trees: `EGMFModel.folded_answers`). Each node attends to the prompt and to its
own ancestors only, at the position its depth gives, so its logits are exactly those that step-by-step greedy
decoding along that path would see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from peft import PeftModel
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache

from .batching import PreparedBatch
from .model_io import Prediction
from .prompt import PromptBuilder


@dataclass(frozen=True)
class AnswerTree:
    """The part of the answer trie below one first answer token that one LLM pass must feed.

    A node is fed when a decision lies at or below it (it has several children, or a fed child): its logits choose
    among its children. Chains with no decision left (the fraction digit's end-of-answer, "1" -> "." -> "0") are
    followed without the model. For "disgust +0.4" the pass feeds "dis g ust", both signs, "+0"/"-0" and their
    "." nodes: 9 tokens in one pass instead of 8 sequential decoding steps.
    """

    root: dict  # the trie node reached by the first token
    tokens: list[int]  # fed nodes' token ids, parents before children (index 0 = the first token, when fed)
    depths: list[int]  # position offset after the prompt's last token (first token = 1)
    ancestors: torch.Tensor  # (n, n) bool: node q may attend to node k (k is q or an ancestor of q)
    index: dict[int, int]  # id(trie node) -> its row among the fed nodes
    choices: list[int]  # every token a fed node chooses among: the only logits `walk` reads

    @classmethod
    def plan(cls, first_token: int, root: dict) -> "AnswerTree":
        fed: dict[int, bool] = {}

        def needs(node: dict) -> bool:
            below = [needs(c) for k, c in node.items() if k is not None]  # every child visited: no short-circuit
            fed[id(node)] = len(below) > 1 or any(below)
            return fed[id(node)]

        needs(root)
        tokens, depths, parents, index, choices = [], [], [], {}, set()
        stack = [(first_token, root, 1, -1)]
        while stack:
            tok, node, depth, parent = stack.pop()
            if not fed[id(node)]:
                continue
            index[id(node)] = len(tokens)
            tokens.append(tok)
            depths.append(depth)
            parents.append(parent)
            children = [(k, c) for k, c in node.items() if k is not None]
            choices.update(k for k, _ in children)
            stack += [(k, c, depth + 1, index[id(node)]) for k, c in children]
        ancestors = torch.eye(len(tokens), dtype=torch.bool)
        for q, p in enumerate(parents):
            if p >= 0:
                ancestors[q] |= ancestors[p]
        return cls(root, tokens, depths, ancestors, index, sorted(choices))

    def walk(self, logits: torch.Tensor | None) -> tuple[tuple[str, float], float]:
        """Greedy path from the first token to a leaf: at each branching node the child with the highest logit.
        Returns the leaf's (label, value) and the path's smallest margin: the logit gap between the chosen child and
        the runner-up at its closest decision (inf when nothing was decided), i.e. how near a tie the answer was."""
        node = self.root
        margin = float("inf")
        while None not in node:
            options = [k for k in node if k is not None]
            if len(options) == 1:
                tok = options[0]
            else:
                row = logits[self.index[id(node)], options]
                top = torch.topk(row, 2).values
                margin = min(margin, float(top[0] - top[1]))
                tok = options[int(torch.argmax(row))]
            node = node[tok]
        return node[None], margin


def build_answer_trees(
    prompts: PromptBuilder, aux_labels: Sequence[str]
) -> tuple[dict[str, dict[int, AnswerTree]], dict[str, tuple[list[int], list[AnswerTree]]]]:
    """One trie of valid answer token sequences per label set (leaves hold (label, score)), and for every first
    answer token the tree of trie nodes that the answer pass must feed; per label set, its labels' auxiliary-head
    columns and answer trees in label order (the trees the prompt pass may carry)."""
    first: dict[str, dict[int, AnswerTree]] = {}
    by_label: dict[str, tuple[list[int], list[AnswerTree]]] = {}
    for name in prompts.label_sets:
        trie: dict = {}
        for label, value, ids in prompts.answer_candidates(name):
            node = trie
            for t in ids:
                node = node.setdefault(t, {})
            node[None] = (label, value)
        first[name] = {tok: AnswerTree.plan(tok, sub) for tok, sub in trie.items()}
        labels = prompts.label_sets[name]
        by_label[name] = ([aux_labels.index(lab) for lab in labels],
                          [first[name][prompts.label_ids[lab][0]] for lab in labels])
    return first, by_label


@dataclass(frozen=True)
class TreeNodes:
    """The answer-tree nodes one LLM pass feeds, per row its trees one after another (left-aligned, padded to the
    longest row): token ids, depths after the prompt, and which node may attend to which (its ancestors)."""

    ids: torch.Tensor  # (B, N) token ids (padding: 0; a padding node sees only itself)
    depth: torch.Tensor  # (B, N) position offset after the prompt's last token
    mask: torch.Tensor  # (B, N, N) bool: node q may attend to node k
    starts: list[dict[int, int]]  # per row: id(tree) -> its first node's column
    choices: set[int]  # every token some fed node chooses among

    @property
    def n(self) -> int:
        return self.ids.shape[1]

    @classmethod
    def of(cls, forests: Sequence[Sequence[AnswerTree]]) -> "TreeNodes":
        n = max((sum(len(t.tokens) for t in f) for f in forests), default=0)
        b = len(forests)
        ids = torch.zeros((b, n), dtype=torch.long)
        depth = torch.zeros((b, n), dtype=torch.long)
        mask = torch.eye(n, dtype=torch.bool).repeat(b, 1, 1)
        starts: list[dict[int, int]] = []
        choices: set[int] = set()
        for i, forest in enumerate(forests):
            at, row = 0, {}
            for t in forest:
                k = len(t.tokens)
                if k:
                    ids[i, at:at + k] = torch.tensor(t.tokens, dtype=torch.long)
                    depth[i, at:at + k] = torch.tensor(t.depths, dtype=torch.long)
                    mask[i, at:at + k, at:at + k] = t.ancestors
                    choices.update(t.choices)
                row[id(t)] = at
                at += k
            starts.append(row)
        return cls(ids, depth, mask, starts, choices)

    def offset(self, row: int, tree: AnswerTree) -> int | None:
        """Column of `tree`'s first node in `row`, or None when the row does not carry it."""
        return self.starts[row].get(id(tree))


def tree_attention_mask(attention_mask: torch.Tensor, nodes: TreeNodes, causal: int, dtype: torch.dtype,
                        additive: bool) -> torch.Tensor:
    """The 4D mask (B, 1, causal + N, past + N) of a pass whose inputs are `causal` prompt positions followed by
    the answer-tree nodes: prompt positions attend causally to the unpadded cache and prompt, as a 2D mask would
    make them (a padding position sees itself only: no all-masked row); a node sees the unpadded cache and
    prompt and its own ancestors. transformers uses a 4D mask as given: boolean, or `additive` (0 / the dtype's
    minimum) for eager attention."""
    b, past = attention_mask.shape
    n = nodes.n
    keys = attention_mask.bool()
    rows = []
    if causal:
        q = torch.arange(past - causal, past, device=keys.device)[:, None]  # the prompt positions' own columns
        k = torch.arange(past, device=keys.device)[None, :]
        prompt = (keys[:, None, :] & (k <= q)[None]) | (k == q)[None]
        rows.append(torch.cat([prompt, torch.zeros((b, causal, n), dtype=torch.bool, device=keys.device)], -1))
    rows.append(torch.cat([keys[:, None, :].expand(b, n, past), nodes.mask.to(keys.device)], -1))
    mask = torch.cat(rows, 1)[:, None]
    if additive:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def choice_logits(llm: nn.Module, kwargs: dict, adapters: dict, choices: set[int],
                  keep: int) -> tuple[torch.Tensor, DynamicCache]:
    """Run `llm` on `kwargs`; return the logits of its last `keep` positions, (B, keep, vocab) float, and the KV
    cache. Only `choices` (the tokens some decision chooses among) are computed, the rest -inf: at this model size
    the output projection over the whole vocabulary costs as much as several decoder layers. Per-row adapters are
    applied by peft's forward, which computes every logit."""
    if adapters:
        out = llm(**kwargs, **adapters, logits_to_keep=keep)
        return out.logits.float(), out.cache
    base = llm.get_base_model() if isinstance(llm, PeftModel) else llm
    out = base.get_decoder()(**kwargs)
    hidden = out.last_hidden_state[:, -keep:]
    ids = torch.tensor(sorted(choices), device=hidden.device)
    head = base.get_output_embeddings()
    sub = F.linear(hidden, head.weight[ids], None if head.bias is None else head.bias[ids]).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        sub = torch.tanh(sub / cap) * cap
    logits = torch.full((*hidden.shape[:2], head.weight.shape[0]), -torch.inf, device=hidden.device)
    logits[..., ids] = sub
    return logits, out.cache


def make_prediction(
    prompts: PromptBuilder, prep: PreparedBatch, i: int, label_set: str, label: str | None, probs: dict[str, float],
    value: float | None, raw_text: str | None = None,
) -> Prediction:
    """Row `i`'s prediction from its decoded answer (`label`, `value`: None where the answer has none) and label
    probabilities, with the fusion stack's gate weights and expert outputs."""
    score = float("nan") if value is None else prompts.snap_score(value, label_set)
    return Prediction(
        emotion=label or "unknown",
        emotion_probs=probs,
        sentiment_score=score,
        sentiment_label=prompts.sentiment_label(score, label_set) if value is not None else "unknown",
        alpha=[float(a) for a in prep.fusion.alpha[i].tolist()],
        modalities=prep.modalities[i],
        raw_text=raw_text,
        expert_outputs=prep.fusion.expert_outputs[i].detach().cpu().numpy(),
    )
