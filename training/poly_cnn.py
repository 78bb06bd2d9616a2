"""A small CNN that single-server CKKS inference can evaluate, and its data.

CKKS evaluates additions and multiplications only, so the network's
activations are squares (:class:`Square`) instead of ReLUs, and its depth is
counted in rescales: conv, square, linear, square, linear use the five levels
of the default parameter set (``ppml.proto.he.params``). The plan the server
runs is made from the trained model by ``ppml.client.he_compile``.

The data is sklearn's 8x8 digits upsampled to MNIST's 1x28x28, so the
reference network has MNIST's shape without a download. Training is plain
torch on the owner's machine; the seeds make it repeatable (the weights are
the owner's, not a secret).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

Floats32 = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

IMAGE_SHAPE = (1, 28, 28)
CLASSES = 10


class Square(nn.Module):
    """``x * x``: the activation a CKKS server can evaluate.

    CKKS evaluates polynomials only (no comparison, so no ReLU or max pool),
    and a square costs one multiplication, i.e. one level of the modulus chain.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def mnist_shaped_digits(seed: int = 0) -> tuple[Floats32, Labels, Floats32, Labels]:
    """sklearn's digits scaled to [0, 1] and upsampled to (rows, 1, 28, 28).

    Returns ``train_x, train_y, test_x, test_y``: a stratified split with 25% of
    the images held out, the same for the same ``seed``.
    """
    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    big = nn.functional.interpolate(
        small, size=IMAGE_SHAPE[1:], mode="bilinear", align_corners=False
    )
    x = big.numpy().astype(np.float32)
    y = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=seed
    )
    return train_x, train_y, test_x, test_y


def poly_cnn() -> nn.Sequential:
    """Conv(1->4, 4x4, stride 4), Square, Flatten, Linear(196, 64), Square, Linear(64, 10).

    Five levels deep: each weighted layer and each square uses one rescale.
    """
    return nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=4, stride=4),
        Square(),
        nn.Flatten(),
        nn.Linear(4 * 7 * 7, 64),
        Square(),
        nn.Linear(64, CLASSES),
    )


def train_poly_cnn(
    train_x: Floats32, train_y: Labels, epochs: int = 20, seed: int = 0
) -> nn.Sequential:
    """Adam on mini-batches of 64; the same weights for the same data and seed.

    Runs on one thread (restored afterwards): the model is tiny, and two
    threads spinning on shared, busy cores are several times slower than one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)  # public: the owner's initial weights and batch order
        model = poly_cnn()
        x = torch.from_numpy(np.asarray(train_x, dtype=np.float32))
        y = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
        # weight decay keeps the squares' outputs, hence the logits, moderate
        opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=3e-3)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(x.shape[0])
            for start in range(0, x.shape[0], 64):
                idx = order[start : start + 64]
                opt.zero_grad()
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
