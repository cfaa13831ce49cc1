"""The examples an attack run is judged on, one builder per task, and how they are scored.

Classification: a seeded subset of the test set, scored by accuracy; decision-based attacks start
from the attacked images themselves. Hashing: the retrieval split's queries (the split recorded by
the target's fine-tune), scored by AP@1000 against the target's database codes; the attacker knows
the hash-training set's codes under its gradient module; decision-based attacks query the
retrieval label and start from training images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ssbench.attacks.scoring import Accuracy, Scorer
from ssbench.attacks.sweep import select_indices, stack_examples
from ssbench.specs import AttackSpec


@dataclass
class AttackExamples:
    x: Tensor
    y: Tensor
    scorer: Scorer
    pool: tuple[Tensor, Tensor]  # starting points of decision-based attacks
    num_classes: int
    clean_params: dict[str, Any]  # params of the clean evaluations the run logs
    summary: dict[str, Any]  # what the run records about its examples
    references: dict[str, Any] = field(default_factory=dict)  # per gradient mode: what the attacker knows
    clean: dict[str, float] = field(init=False)  # the target's clean scores (means), logged as evaluations
    clean_scores: Tensor = field(init=False)  # per example (what check eps0_equals_clean compares with)

    def __post_init__(self) -> None:
        # one clean pass over the examples, for the logged means and the per-example scores alike
        per = self.scorer.score(self.x, torch.arange(len(self.x), device=self.x.device))
        self.clean_scores = per[self.scorer.metric]
        self.clean = {k: float(v.float().mean()) for k, v in per.items()}


def examples_for(target: Any, surrogate: Any, spec: AttackSpec, device: torch.device) -> AttackExamples:
    """``target`` / ``surrogate``: TrainedModel objects (the surrogate may be None)."""
    from ssbench.data import load_data

    bundle = load_data(target.spec.data)
    if target.spec.task == "hashing":
        return _retrieval(target, surrogate, bundle, spec, device)
    indices = select_indices(len(bundle.test), spec.n_examples, spec.seed)
    x, y = stack_examples(bundle.test, indices, device)
    scorer = Accuracy(target.model.eval(), y, spec.batch_size, bundle.num_classes)
    return AttackExamples(x, y, scorer, (x, y), bundle.num_classes, {"n": len(indices), "clean": True}, {"indices": indices})


def _retrieval(target: Any, surrogate: Any, bundle: Any, spec: AttackSpec, device: torch.device) -> AttackExamples:
    from ssbench.retrieval.scoring import Reference, RetrievalScore, build_sets, recorded_split, reference, retrieval_pool

    split, used = recorded_split(target, bundle)
    sets = build_sets(target.model, bundle, spec.n_examples, device, split=split)
    scorer = RetrievalScore(target.model.eval(), sets, spec.batch_size, device)
    x, y = sets.query_x.to(device), sets.query_y.to(device)
    known = Reference(sets.train_codes, sets.train_labels)  # the target's codes: feedback and exact modes
    refs = {"feedback": known, "exact": known}
    if surrogate is not None:
        refs["transfer"] = reference(surrogate.model.eval(), sets, device)
    pool_x, pool_y = retrieval_pool(sets, spec.seed)
    return AttackExamples(x, y, scorer, (pool_x.to(device), pool_y.to(device)), sets.num_classes,
                          {"queries": len(y), "suite": "hashing", "clean": True}, {"retrieval_split": used}, refs)
