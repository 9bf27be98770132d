"""Downstream metrics against hand-computed cases, the ignore index included."""

import pytest
import torch

from skysense.tasks.metrics import Evaluator


def onehot_logits(pred, k):
    return torch.nn.functional.one_hot(torch.as_tensor(pred), k).float().movedim(-1, 1)


def test_classification_oa_and_per_class_accuracy():
    ev = Evaluator("classification", ["a", "b", "c"])
    ev.update(onehot_logits([0, 0, 1, 2, 2, 1], 3), torch.tensor([0, 1, 1, 2, 2, 2]))
    got = ev.compute()
    assert got["oa"] == pytest.approx(4 / 6)
    assert (got["acc/a"], got["acc/b"], got["acc/c"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert got["macc"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert ev.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]


def test_segmentation_iou_f1_with_ignored_pixels():
    target = torch.tensor([[[0, 0, 1], [1, -1, 2]]])  # one ignored pixel
    pred = torch.tensor([[[0, 1, 1], [1, 0, 0]]])  # its prediction (0) must count nowhere
    ev = Evaluator("segmentation", ["a", "b", "c"])
    ev.update(onehot_logits(pred, 3), target)
    got = ev.compute()
    # a: tp 1 [0,0], fn 1 [0,1], fp 1 [1,2] -> 1/3; b: tp 2 [0,2] [1,0], fp 1 [0,1] -> 2/3; c: fn 1 -> 0
    assert (got["iou/a"], got["iou/b"], got["iou/c"]) == pytest.approx((1 / 3, 2 / 3, 0.0))
    assert got["miou"] == pytest.approx(1 / 3)
    assert got["mf1"] == pytest.approx((2 * 1 / 4 + 2 * 2 / 5 + 0) / 3)
    assert got["oa"] == pytest.approx(3 / 5)


def test_absent_classes_leave_the_means():
    ev = Evaluator("segmentation", ["a", "b", "c"])
    ev.update(onehot_logits(torch.tensor([[[0, 1]]]), 3), torch.tensor([[[0, 1]]]))
    got = ev.compute()
    assert got["miou"] == 1.0 and got["iou/c"] != got["iou/c"]  # NaN: neither labelled nor predicted


def test_change_precision_recall_f1_iou():
    target = torch.tensor([[[1, 1, 0, 0, -1]]])
    logits = torch.tensor(
        [[[[5.0, -5.0, 5.0, -5.0, 5.0]]]]
    )  # tp 1, fn 1, fp 1; the ignored one counts nowhere
    ev = Evaluator("change", ["no change", "change"])
    ev.update(logits, target)
    got = ev.compute()
    assert (got["precision"], got["recall"], got["f1"], got["iou"]) == pytest.approx((0.5, 0.5, 0.5, 1 / 3))


def test_multilabel_map():
    ev = Evaluator("multilabel", ["a", "b"])
    ev.update(torch.tensor([[3.0, -1.0], [-2.0, 2.0], [1.0, 0.5]]), torch.tensor([[1, 0], [0, 1], [1, 0]]))
    got = ev.compute()
    assert got["map"] == pytest.approx((1.0 + 1.0) / 2)  # every positive ranked above every negative
    with pytest.raises(ValueError, match="task 'detection'"):
        Evaluator("detection", ["a"])


def test_change_loss_weighs_change_pixels_by_class_weights():
    from skysense.config import from_dict
    from skysense.tasks.finetune import FinetuneConfig, task_loss

    logits = torch.tensor([[[[0.3, -1.2], [2.0, 0.1]]]])
    target = torch.tensor([[[1, 0], [-1, 1]]])
    cfg = from_dict(FinetuneConfig, {"task": "change", "class_weights": [1.0, 6.0]})
    got = task_loss({"logits": logits}, {"target": target}, cfg)["loss"]
    x, y = torch.tensor([0.3, -1.2, 0.1]), torch.tensor([1.0, 0.0, 1.0])
    by_hand = -(6 * y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x))).mean()
    assert float(got) == pytest.approx(float(by_hand), rel=1e-6)  # the ignored pixel counts nowhere
