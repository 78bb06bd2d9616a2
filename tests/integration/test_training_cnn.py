"""A convolutional network trains in MPC like the MLPs: every layer type of the inference path."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ppml.client import Cluster
from ppml.client.exported import to_torch
from ppml.client.model_export import export_model
from ppml.proto.domain.jobs import TrainingSpec
from ppml.training.plaintext import train_plaintext


def test_cnn_with_every_layer_type_trains_like_plaintext(cluster2: Cluster, digits: Any) -> None:
    images = digits.x_train[:384].reshape(-1, 1, 8, 8)
    labels = digits.y_train[:384]
    data_id = cluster2.share_dataset(images, labels, name="digit-images", num_classes=10)
    torch.manual_seed(4)
    cnn = torch.nn.Sequential(
        torch.nn.BatchNorm2d(1).eval(),  # nothing to fold into: a secret Affine layer
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4).eval(),  # folded into the convolution when exported
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    ).eval()
    hyper = {"epochs": 1, "batch_size": 128, "lr": 0.1, "momentum": 0.9}
    job = cluster2.train(cnn, [data_id], **hyper, seed=3)
    model_id = job.result(timeout=600)

    trained = cluster2.export_model(model_id)
    kinds = [type(layer).__name__ for layer in trained.meta.architecture.layers]
    assert kinds[:2] == ["Affine", "Conv2d"] and "MaxPool2d" in kinds and "AvgPool2d" in kinds
    assert len(kinds) == 9  # the second BatchNorm was folded into its convolution
    exported = trained.to_torch()

    # the plaintext twin starts from exactly what the servers started from
    architecture, initial = export_model(cnn, images[:1])
    start = to_torch(architecture, {k: torch.from_numpy(v) for k, v in initial.items()})
    spec = TrainingSpec((data_id,), seed=3, **hyper)
    plain = train_plaintext(start, images.numpy(), labels.numpy(), spec, 10)
    test = digits.x_test.reshape(-1, 1, 8, 8)
    with torch.no_grad():
        mpc_out, plain_out = exported(test), plain(test)
    agree = float((mpc_out.argmax(1) == plain_out.argmax(1)).float().mean())
    assert agree > 0.9, agree
    for name, value in plain.state_dict().items():
        assert (exported.state_dict()[name] - value).abs().max() < 0.05, name
    served = cluster2.predict(model_id, test[:16])
    np.testing.assert_allclose(served.numpy(), mpc_out[:16].numpy(), atol=0.05)
