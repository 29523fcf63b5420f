"""Shared pieces of the NumPy reference scripts: the exported CSV files and the logistic model."""
import numpy as np


def load(path):
    """Features, labels and device of each row of a CSV written by `cohort data export`."""
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    return data[:, 2:], data[:, 0].astype(np.int64), data[:, 1].astype(np.int64)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate(w, b, x, y):
    """Mean cross-entropy and accuracy of the model x @ w + b."""
    p = softmax(x @ w + b)
    loss = -np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-300)))
    return loss, float(np.mean(p.argmax(axis=1) == y))
