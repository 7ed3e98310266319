"""Classification metrics against values computed by hand, and the text report."""

from __future__ import annotations

import json

import pytest

from softprompt.tasks.metrics import classification_metrics, format_report

GOLD = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "a", "b", "b", "c", "c"]
# By hand:  a: tp 2, fp 0, fn 1 -> P 1,   R 2/3, F1 0.8
#           b: tp 1, fp 1, fn 1 -> P 1/2, R 1/2, F1 1/2
#           c: tp 1, fp 1, fn 0 -> P 1/2, R 1,   F1 2/3
# accuracy 4/6; macro-F1 (0.8 + 0.5 + 2/3) / 3 = 59/90


def test_hand_computed_values():
    m = classification_metrics(GOLD, PRED, ["a", "b", "c"])
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx(59 / 90)
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert list(m["per_class"]) == ["a", "b", "c"]


def test_plain_python_types_and_json():
    m = classification_metrics(GOLD, PRED, ["a", "b", "c"])
    assert type(m["accuracy"]) is float and type(m["macro_f1"]) is float and type(m["n"]) is int
    for scores in m["per_class"].values():
        assert [type(scores[k]) for k in ("precision", "recall", "f1", "support")] == [float, float, float, int]
    assert json.loads(json.dumps(m)) == m


def test_unseen_class_and_out_of_label_predictions_score_zero():
    # "d" is never gold nor predicted: F1 0 (zero_division=0) and it still counts in macro-F1.
    # "??" is not a label: wrong for accuracy and for the recall of gold "b".
    m = classification_metrics(["a", "b"], ["a", "??"], ["a", "b", "d"])
    assert m["accuracy"] == 0.5
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx(1 / 3)


def test_perfect_and_string_labels_like_digits():
    m = classification_metrics(["0", "1", "1"], ["0", "1", "1"], ["0", "1"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0


def test_errors():
    with pytest.raises(ValueError, match="differ in length: 2 gold labels, 1 predictions"):
        classification_metrics(["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics([], [], ["a"])
    with pytest.raises(ValueError, match=r"gold labels not in labels: \['z'\]"):
        classification_metrics(["z"], ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="duplicates"):
        classification_metrics(["a"], ["a"], ["a", "a"])


def test_format_report_is_aligned():
    m = classification_metrics(["entailment", "not_entailment"], ["entailment", "entailment"],
                               ["entailment", "not_entailment"])
    text = format_report(m)
    lines = text.splitlines()
    assert lines[0].split() == ["label", "precision", "recall", "f1", "support"]
    assert lines[1].split() == ["entailment", "0.5000", "1.0000", "0.6667", "1"]
    assert lines[2].split() == ["not_entailment", "0.0000", "0.0000", "0.0000", "1"]
    assert len({len(line) for line in lines[:3]}) == 1  # columns line up
    assert "accuracy  0.5000  (n=2)" in lines
    assert lines[-1] == "macro-F1  0.3333"
