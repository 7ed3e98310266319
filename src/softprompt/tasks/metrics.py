"""Classification scores (accuracy, macro-F1, per-class precision/recall/F1) and a text report of them."""

from __future__ import annotations

from typing import Sequence

from sklearn.metrics import accuracy_score, precision_recall_fscore_support

__all__ = ["classification_metrics", "format_report"]


def classification_metrics(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Return accuracy, macro-F1, n and per-class precision/recall/F1/support as plain Python numbers.

    ``labels`` fixes the classes and their order in ``per_class``; macro-F1 averages over all of
    them, so a class that is neither in ``gold`` nor predicted counts as F1 0 (scikit-learn's
    ``zero_division=0``, as for any empty precision or recall). A prediction outside ``labels``
    (e.g. unparsable generated text) is simply wrong: it lowers accuracy and the gold class's
    recall. A gold label outside ``labels`` raises ValueError, since it could never be predicted.
    """
    gold = [str(g) for g in gold]
    pred = [str(p) for p in pred]
    labels = [str(label) for label in labels]
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} gold labels, {len(pred)} predictions")
    if not gold:
        raise ValueError("no examples to score: gold and pred are empty")
    if not labels:
        raise ValueError("labels is empty: name the classes to score")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels has duplicates: {labels}")
    unknown = sorted(set(gold) - set(labels))
    if unknown:
        raise ValueError(f"gold labels not in labels: {unknown} (labels: {labels})")

    precision, recall, f1, support = precision_recall_fscore_support(
        gold, pred, labels=labels, average=None, zero_division=0
    )
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        # Mean of the per-class F1 above: the same number f1_score(average="macro") gives.
        "macro_f1": float(sum(c["f1"] for c in per_class.values()) / len(labels)),
        "n": len(gold),
        "per_class": per_class,
    }


def format_report(metrics: dict) -> str:
    """A small aligned text table of per-class scores, then the summary lines: accuracy and macro-F1
    (classification), span F1 (token labelling), BLEU and ROUGE-L (generation); any other task
    kind's metrics one after another."""
    if "bleu" in metrics:  # generation
        return f"BLEU {metrics['bleu']:.2f}  ROUGE-L {metrics['rougeL']:.2f}  (n={metrics['n']} distinct inputs)"
    if "macro_f1" in metrics:
        return _class_report(metrics)
    if "f1" in metrics:  # span-level token labelling (seqeval)
        return _span_report(metrics)
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                     if k != "per_class")


def _span_report(metrics: dict) -> str:
    per_class = metrics.get("per_class", {})
    width = max([len("entity"), *(len(str(label)) for label in per_class)])
    lines = [f"{'entity':<{width}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}"]
    for label, s in per_class.items():
        lines.append(f"{label:<{width}}  {s['precision']:>9.4f}  {s['recall']:>6.4f}  {s['f1-score']:>6.4f}  "
                     f"{int(s['support']):>7d}")
    lines += ["", f"span F1   {metrics['f1']:.4f}  precision {metrics['precision']:.4f}  "
                  f"recall {metrics['recall']:.4f}  (n={metrics['n']} sentences)",
              f"token accuracy  {metrics['accuracy']:.4f}"]
    return "\n".join(lines)


def _class_report(metrics: dict) -> str:
    per_class = metrics.get("per_class", {})
    width = max([len("label"), *(len(str(label)) for label in per_class)])
    lines = [f"{'label':<{width}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}"]
    for label, s in per_class.items():
        lines.append(
            f"{str(label):<{width}}  {s['precision']:>9.4f}  {s['recall']:>6.4f}  {s['f1']:>6.4f}  {s['support']:>7d}"
        )
    lines.append("")
    lines.append(f"accuracy  {metrics['accuracy']:.4f}  (n={metrics['n']})")
    lines.append(f"macro-F1  {metrics['macro_f1']:.4f}")
    return "\n".join(lines)
