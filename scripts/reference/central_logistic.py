#!/usr/bin/env python3
"""Independent reference: multinomial logistic regression trained with minibatch SGD in NumPy.

It reads the CSV files `cohort data export SCENARIO --out DIR` writes (label, device, f0, f1, ...)
and trains with the same hyperparameters as `cohort train`: plain SGD, mean softmax cross-entropy
over each minibatch, a fresh shuffle per epoch. It shares no code with Cohort: its own
initialisation (zeros), its own shuffling (NumPy's PCG64), its own arithmetic (float64).

    cohort data export Simulations/synthetic-1-1.yaml --out /tmp/syn
    python3 scripts/reference/central_logistic.py /tmp/syn --epochs 20 --batch-size 10 --learning-rate 0.05
"""
import argparse

import numpy as np

from logistic import evaluate, load, softmax


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--learning-rate", type=float, default=0.05)
    ap.add_argument("--classes", type=int, default=0, help="default: largest label + 1")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    x, y, _ = load(f"{args.directory}/train.csv")
    xt, yt, _ = load(f"{args.directory}/test.csv")
    classes = args.classes or int(max(y.max(), yt.max())) + 1
    w = np.zeros((x.shape[1], classes))
    b = np.zeros(classes)
    rng = np.random.default_rng(args.seed)
    history = []
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(y))
        for start in range(0, len(y), args.batch_size):
            idx = order[start:start + args.batch_size]
            p = softmax(x[idx] @ w + b)
            p[np.arange(len(idx)), y[idx]] -= 1
            p /= len(idx)
            w -= args.learning_rate * (x[idx].T @ p)
            b -= args.learning_rate * p.sum(axis=0)
        loss, acc = evaluate(w, b, xt, yt)
        history.append(acc)
        print(f"epoch {epoch:3d}  test loss {loss:.4f}  test accuracy {acc:.4f}")
    last = history[-10:]
    print(f"final test accuracy {acc:.4f}; mean of the last {len(last)} epochs {np.mean(last):.4f}")


if __name__ == "__main__":
    main()
