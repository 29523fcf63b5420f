#!/usr/bin/env python3
"""Independent reference: FedAvg (McMahan et al. 2017) for multinomial logistic regression in NumPy.

It reads the CSV files `cohort data export SCENARIO --out DIR` writes (label, device, f0, f1, ...;
test.csv has device -1) and runs synchronous FedAvg with no dropouts or deadlines:

  each round, sample --cohort devices uniformly without replacement among the devices that hold
  training examples; each runs --epochs of minibatch SGD (--batch-size, --learning-rate, a fresh
  shuffle per epoch, mean softmax cross-entropy per batch) from the global weights; the new global
  model is the mean of the local models weighted by their training example counts. The global
  model is evaluated on test.csv every --eval-every rounds and after the last.

It shares no code with Cohort: its own sampling and shuffling (one NumPy PCG64 stream seeded by
--seed), its own arithmetic (float64).

Initial weights: --init zeros (default), or --init PATH.npy holding either
  - a flat array of classes*features + classes values in Cohort's logistic-regression layout:
    dense0.weight [classes, features] row-major, then dense0.bias [classes]; or
  - a 2-D array of shape (features + 1, classes): rows 0..features-1 are W (logits = x @ W + b),
    the last row is b.

    cohort data export Simulations/synthetic-1-1.yaml --out /tmp/syn
    python3 scripts/reference/fedavg.py /tmp/syn --rounds 200 --cohort 100 --epochs 1 \\
        --batch-size 10 --learning-rate 0.05
"""
import argparse
import sys

import numpy as np

from logistic import evaluate, load, softmax


def initial_weights(spec, features, classes):
    if spec == "zeros":
        return np.zeros((features, classes)), np.zeros(classes)
    a = np.load(spec).astype(np.float64)
    if a.ndim == 1 and a.size == classes * features + classes:
        w = a[: classes * features].reshape(classes, features).T.copy()
        return w, a[classes * features:].copy()
    if a.shape == (features + 1, classes):
        return a[:features].copy(), a[features].copy()
    sys.exit(
        f"{spec}: expected a flat array of {classes * features + classes} values (Cohort's layout) "
        f"or an array of shape ({features + 1}, {classes}); got shape {a.shape}")


def local_sgd(w, b, x, y, epochs, batch_size, learning_rate, rng):
    """Minibatch SGD from (w, b) on one device's examples; returns the local model and loss sum."""
    w = w.copy()
    b = b.copy()
    n = len(y)
    loss_sum = 0.0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            p = softmax(x[idx] @ w + b)
            rows = np.arange(len(idx))
            loss_sum -= np.sum(np.log(np.maximum(p[rows, y[idx]], 1e-300)))
            p[rows, y[idx]] -= 1
            p /= len(idx)
            w -= learning_rate * (x[idx].T @ p)
            b -= learning_rate * p.sum(axis=0)
    return w, b, loss_sum


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--cohort", type=int, default=100, help="devices per round (all, if fewer hold data)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--learning-rate", type=float, default=0.05)
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--classes", type=int, default=0, help="default: largest label + 1")
    ap.add_argument("--init", default="zeros", help="zeros, or a .npy file (layouts above)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    x, y, owner = load(f"{args.directory}/train.csv")
    xt, yt, _ = load(f"{args.directory}/test.csv")
    classes = args.classes or int(max(y.max(), yt.max())) + 1
    order = np.argsort(owner, kind="stable")
    ids, starts = np.unique(owner[order], return_index=True)
    groups = np.split(order, starts[1:])
    devices = [(int(d), g) for d, g in zip(ids, groups) if d >= 0 and len(g) > 0]
    cohort = min(args.cohort, len(devices))
    w, b = initial_weights(args.init, x.shape[1], classes)
    print(
        f"{len(devices)} devices with {len(y)} training examples, {len(yt)} test examples, "
        f"{x.shape[1]} features, {classes} classes; cohort {cohort}, {args.rounds} rounds")

    rng = np.random.default_rng(args.seed)
    history = []
    acc = float("nan")
    for r in range(1, args.rounds + 1):
        chosen = rng.choice(len(devices), size=cohort, replace=False)
        w_sum = np.zeros_like(w)
        b_sum = np.zeros_like(b)
        examples = 0
        loss_sum = 0.0
        for i in chosen:
            _, idx = devices[i]
            lw, lb, ls = local_sgd(w, b, x[idx], y[idx], args.epochs, args.batch_size, args.learning_rate, rng)
            w_sum += len(idx) * lw
            b_sum += len(idx) * lb
            examples += len(idx)
            loss_sum += ls
        w = w_sum / examples
        b = b_sum / examples
        train_loss = loss_sum / (examples * args.epochs)
        if r % args.eval_every == 0 or r == args.rounds:
            loss, acc = evaluate(w, b, xt, yt)
            history.append(acc)
            print(f"round {r:4d}  train loss {train_loss:.4f}  test loss {loss:.4f}  test accuracy {acc:.4f}")
    last = history[-10:]
    print(f"final test accuracy {acc:.4f}; mean of the last {len(last)} evaluations {np.mean(last):.4f}")


if __name__ == "__main__":
    main()
