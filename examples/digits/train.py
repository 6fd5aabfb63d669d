"""Train the ``digits`` example AI and export it to ONNX.

Needs the ``train`` extra (scikit-learn, skl2onnx, onnx):

    .venv/bin/pip install -e '.[train]'
    .venv/bin/python examples/digits/train.py

Trains a standard-scaler + small MLP (one hidden layer of 32) on scikit-learn's
bundled 8x8 digits (pixel values 0..16), holding out 25 % for testing, with
fixed random states so a re-run gives the same model.  Writes:

* ``model.onnx`` - input ``input`` float32 [N, 64]; outputs ``label`` int64 [N]
  and ``probabilities`` float32 [N, 10] (no ZipMap, so plain tensors);
* ``samples/<label>-<index>.json`` - the first held-out image of each digit,
  as a request body ``{"pixels": [64 numbers]}`` (``index`` is the row in
  ``load_digits``);
* the ``[files]`` table of ``ai.toml`` (hashes of every file here).

and prints the held-out accuracy, both in scikit-learn and in ONNX Runtime.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from update_files import update_files  # noqa: E402  (examples/update_files.py)

SEED = 0
TARGET_OPSET = 17


def main() -> None:
    x, y = load_digits(return_X_y=True)
    index = np.arange(len(y))
    x_train, x_test, y_train, y_test, _, i_test = train_test_split(
        x, y, index, test_size=0.25, random_state=SEED, stratify=y
    )
    model = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=2000, random_state=SEED)
    )
    model.fit(x_train.astype(np.float32), y_train)
    print(f"scikit-learn held-out accuracy: {model.score(x_test.astype(np.float32), y_test):.4f}")

    onx = convert_sklearn(
        model,
        name="digits",
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={MLPClassifier: {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    (HERE / "model.onnx").write_bytes(onx.SerializeToString())

    samples = HERE / "samples"
    samples.mkdir(exist_ok=True)
    for old in samples.glob("*.json"):
        old.unlink()
    for digit in range(10):
        i = int(i_test[list(y_test).index(digit)])
        body = {"pixels": [int(v) for v in x[i]]}
        (samples / f"{digit}-{i}.json").write_text(json.dumps(body) + "\n")

    import onnxruntime as ort

    sess = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    labels, _probs = sess.run(["label", "probabilities"], {"input": x_test.astype(np.float32)})
    print(f"ONNX Runtime held-out accuracy:  {float(np.mean(labels == y_test)):.4f}")

    update_files(HERE)
    print(f"wrote {HERE / 'model.onnx'} ({(HERE / 'model.onnx').stat().st_size} bytes), "
          f"10 samples, and the [files] table of ai.toml")


if __name__ == "__main__":
    main()
