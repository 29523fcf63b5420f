#!/usr/bin/env python3
"""Writes initial.safetensors: the first model of the tests' `model.initial` plan.

The model is `mlp` with 60 inputs, one hidden layer of 4 and 10 classes, in Cohort's names and
PyTorch's shapes (nn.Linear weight [out, in]):

    dense0.weight [4, 60]   dense0.bias [4]   dense1.weight [10, 4]   dense1.bias [10]

Element k of tensor t (t numbered in that order) is ((37 k + 11 t) mod 101 - 50) / 256, a
dyadic rational Float32 holds exactly, so the Swift test recomputes every value bit for bit.
The file is written as the safetensors format describes it, with NumPy, json and struct only:
8-byte little-endian header length, JSON header (padded with spaces to a multiple of 8), then
the tensors' little-endian bytes. Tensors are stored in name order (as safetensors' own
`save_file` does), which is not the model's order, so the reader must map them by name.

Run from this directory: python3 make_initial.py
"""
import json
import struct

import numpy as np

TENSORS = [
    ("dense0.weight", (4, 60)),
    ("dense0.bias", (4,)),
    ("dense1.weight", (10, 4)),
    ("dense1.bias", (10,)),
]


def values(t, shape):
    k = np.arange(int(np.prod(shape)), dtype=np.int64)
    return (((37 * k + 11 * t) % 101 - 50) / 256).astype("<f4").reshape(shape)


def main():
    arrays = {name: values(t, shape) for t, (name, shape) in enumerate(TENSORS)}
    header = {"__metadata__": {"format": "pt", "written_by": "make_initial.py"}}
    data = b""
    for name in sorted(arrays):
        raw = arrays[name].tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(arrays[name].shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open("initial.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(data)


if __name__ == "__main__":
    main()
