"""Variant labels: what tells two runs apart besides their seed, read from each run's stored config.

The `runs` table keeps only the rule / model / dataset *names*; an IFA run at theta = 30 and one at
theta = 60, an MLP of depth 2 and one of depth 4, or 1,500 and 6,000 training images share them.
The report groups by the labels built here so that only seeds are averaged:

    rule      ifa(θ=30), fa(skip=fc2)         RuleSpec name + options
    model     mlp[256x3], resnet18[pretrained] ModelSpec name + hidden widths / pretrained
    dataset   fashion-mnist[5-9, train=1500]  DataSpec name + class subset / train_limit
    bits      32                              HashSpec bits (hashing runs; NaN otherwise)
    variant   "epochs=3, optim.lr=0.05"       any other config key that differs between runs that
                                              share the four labels above (empty when none does)

Attack and analysis runs take the labels of the run they attacked / analysed (their parent).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import pandas as pd

LABELS = ["rule", "model", "dataset", "bits", "variant"]
RULE_ORDER = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "ifa")
CHILD_KINDS = ("attack", "analysis")

# Config keys that differ between seeds of one variant (or do not change the result), so they
# never make a variant: the seeds themselves, the source run (one pretrain per seed), where/how it ran.
SEED_LIKE = {
    "seed", "rule.seed", "data.split_seed", "source", "recipe", "tags", "device", "deterministic",
    "data.data_dir", "data.download", "eval_batch_size", "track_alignment", "track_grad_alignment",
    # how the job used the hardware: rounding at most (precision, which changes the arithmetic, is a variant)
    "compute.channels_last", "compute.compile", "compute.workers", "compute.gpus",
}
# Keys that the labels already show.
LABELLED = {
    "kind", "task", "rule", "rule.name", "rule.theta", "rule.skip", "model", "model.name", "model.hidden",
    "model.pretrained", "model.weights", "data.name", "data.classes", "data.train_limit", "hashing.bits",
    "weight_vars", "feedback_vars",  # a trainability map's grid: its table shows every cell's variances
}


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _num(v: float) -> str:
    return f"{float(v):g}"


def rule_label(config: dict[str, Any] | None, name: Any) -> str:
    """`ifa(θ=30)`, `fa(skip=conv1,fc2)`, or the bare name."""
    spec = _dict(_dict(config).get("rule"))
    base = str(spec.get("name") or name)
    opts = []
    if spec.get("theta") is not None:
        opts.append(f"θ={_num(spec['theta'])}")
    if spec.get("skip"):
        opts.append("skip=" + ",".join(map(str, spec["skip"])))
    return f"{base}({', '.join(opts)})" if opts else base


def _widths(hidden: Iterable[int]) -> str:
    h = [int(v) for v in hidden]
    return f"{h[0]}x{len(h)}" if len(h) > 1 and len(set(h)) == 1 else "-".join(map(str, h))


def model_label(config: dict[str, Any] | None, name: Any) -> str:
    """`mlp[256x3]` (three hidden layers of 256), `mlp[512-256]`, `resnet18[pretrained]`, or the bare name."""
    spec = _dict(_dict(config).get("model"))
    base = str(spec.get("name") or name)
    opts = []
    if spec.get("hidden"):
        opts.append(_widths(spec["hidden"]))
    if spec.get("pretrained") or spec.get("weights"):  # torchvision's weights, downloaded or from a file
        opts.append("pretrained")
    return f"{base}[{', '.join(opts)}]" if opts else base


def _classes(classes: Iterable[int]) -> str:
    c = [int(v) for v in classes]
    if len(c) > 2 and c == list(range(c[0], c[0] + len(c))):
        return f"{c[0]}-{c[-1]}"
    return ",".join(map(str, c))


def dataset_label(config: dict[str, Any] | None, name: Any) -> str:
    """`fashion-mnist[5-9, train=1500]` (class subset, training-set size), or the bare name."""
    spec = _dict(_dict(config).get("data"))
    base = str(spec.get("name") or name)
    opts = []
    if spec.get("classes"):
        opts.append(_classes(spec["classes"]))
    if spec.get("train_limit") is not None:
        opts.append(f"train={int(spec['train_limit'])}")
    return f"{base}[{', '.join(opts)}]" if opts else base


def hash_bits(config: dict[str, Any] | None) -> float:
    bits = _dict(_dict(config).get("hashing")).get("bits")
    return float(bits) if bits is not None else float("nan")


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, float):
        return {prefix[:-1]: _num(obj)}
    return {prefix[:-1]: json.dumps(obj, sort_keys=True) if isinstance(obj, (list, dict)) else str(obj)}


def _other_keys(config: Any) -> dict[str, str]:
    flat = _flatten(_dict(config))
    return {k: v for k, v in flat.items() if k not in SEED_LIKE and k not in LABELLED}


def run_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """Labels of every run in `runs` (a `Store.frame_runs()` frame), indexed by run id.

    Columns: subject (the trained run the numbers are about: the parent of an attack / analysis
    run, else the run itself), kind (the subject's kind), rule, model, dataset, bits, variant,
    seed, recipe and tags (the subject's, falling back to the run's own)."""
    cols = ["subject", "kind", *LABELS, "seed", "recipe", "tags"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    by_id = runs.set_index("id", drop=False)
    subject = {}
    for rid, kind, parent in zip(runs["id"], runs["kind"], runs["parent_id"]):
        has_parent = parent is not None and not pd.isna(parent) and int(parent) in by_id.index
        subject[int(rid)] = int(parent) if kind in CHILD_KINDS and has_parent else int(rid)
    subjects = sorted(set(subject.values()))
    s = by_id.loc[subjects]
    lab = pd.DataFrame({
        "kind": s["kind"].to_numpy(),
        "rule": [rule_label(c, r) for c, r in zip(s["config"], s["rule"])],
        "model": [model_label(c, m) for c, m in zip(s["config"], s["model"])],
        "dataset": [dataset_label(c, d) for c, d in zip(s["config"], s["dataset"])],
        "bits": [hash_bits(c) for c in s["config"]],
    }, index=pd.Index(subjects, name="id"))
    lab["variant"] = _variants(lab, s["config"], (s["status"] == "finished").to_numpy())
    lab["seed"] = s["seed"].to_numpy()
    lab["recipe"] = s["recipe"].to_numpy()
    lab["tags"] = s["tags"].to_numpy()
    out = lab.loc[[subject[int(r)] for r in runs["id"]]].copy()
    out.insert(0, "subject", [subject[int(r)] for r in runs["id"]])
    out.index = pd.Index(runs["id"].astype(int).to_numpy(), name="id")
    own = by_id.loc[out.index]
    # a child run with no parent in the store keeps its own filters' values
    out["recipe"] = [r if r is not None and not pd.isna(r) else o for r, o in zip(out["recipe"], own["recipe"])]
    return out[cols]


def _variants(lab: pd.DataFrame, configs: pd.Series, finished: Any) -> list[str]:
    """Per subject run: the config keys (outside the labels and the seed-like keys) whose values differ
    between the finished runs of its group of equal labels, as `key=value, ...` (a crashed attempt
    with other settings must not relabel the runs that count)."""
    flats = [_other_keys(c) for c in configs]
    out = [""] * len(lab)
    keys = ["kind", "rule", "model", "dataset", "bits"]
    groups = lab.reset_index(drop=True).groupby(keys, dropna=False, sort=False).indices
    for idx in groups.values():
        done = [i for i in idx if finished[i]]
        members = [flats[i] for i in (done or idx)]
        names = sorted(set().union(*members))
        differ = [k for k in names if len({m.get(k) for m in members}) > 1]
        for i in idx:
            out[i] = ", ".join(f"{k}={flats[i].get(k, 'none')}" for k in differ)
    return out


def base_rule(label: str) -> str:
    """The rule name in a label: `ifa(θ=30) [epochs=3]` -> `ifa`."""
    return re.split(r"[(\[ ]", str(label), maxsplit=1)[0]


def _natural(s: str) -> tuple[Any, ...]:
    # (0, number) / (1, text) tokens: numbers compare as numbers, never against text
    return tuple((0, float(t), "") if re.fullmatch(r"\d+(\.\d+)?", t) else (1, 0.0, t)
                 for t in re.split(r"(\d+(?:\.\d+)?)", s) if t)


def rule_sort_key(label: Any) -> tuple[Any, ...]:
    """bp first, then the rules in RULE_ORDER, options in numeric order (θ=5 before θ=15)."""
    base = base_rule(str(label))
    return (RULE_ORDER.index(base) if base in RULE_ORDER else len(RULE_ORDER), base, _natural(str(label)))


def sort_rules(labels: Iterable[Any]) -> list[str]:
    return sorted({str(v) for v in labels}, key=rule_sort_key)
