"""Learning for real on Shapes196 (fixed seed): the demo's own runs.

Classification test accuracy >= 90 %; retrieval Recall@1 on the 98 unseen classes at least 0.15 above
both the raw-pixel Recall@1 and the untrained network's, both computed here.

This trains two CUBS-ResNet-18 runs: minutes on a GPU (the demo's GPU defaults: 64×64, small stem,
30 + 30 epochs) but about an hour on the 2-core CPU machine, where it runs only with RECOGFAST_SLOW=1
(32×32, ImageNet stem, crop scale 0.35, 40 classification + 25 retrieval epochs).
The result is the LAST epoch's model: the demo trains without a validation split (val_fraction=0), so
nothing is chosen, and scores that model on the test split once, at the end. Its training data are the
same as before validation splits existed (all 30 train images a class, all 98 train classes), and a
short CPU run of the old and the new demo gave bit-identical numbers, so the measurement below still
holds; the "best 0.440 at 24" note came from per-epoch test evaluations the demo no longer makes.
Measured (CPU, 2 cores, this configuration, `RECOGFAST_SLOW=1 pytest tests/test_learning.py`, 2 passed in
49.6 min on a quiet machine; bit-identical logs on a second run): classification top-1 0.962 at epoch 40 (0.889 at 26, >= 0.95 from 34 on); retrieval Recall@1
0.430 at epoch 25 (best 0.440 at 24) against raw pixels 0.267 and the untrained network 0.241: +0.163 and
+0.189, bounds +0.15.
"""

import json
import os

import pytest
import torch

from recogfast.demo import main as demo_main

ON_GPU = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not (ON_GPU or os.environ.get("RECOGFAST_SLOW") == "1"),
    reason="trains two CUBS-ResNet-18 runs on Shapes196: set RECOGFAST_SLOW=1 on a CPU",
)


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = ["--out", str(out), "--quiet"]
    if not ON_GPU:
        argv += ["--image-size", "32", "--device", "cpu", "--classify-epochs", "40", "--retrieval-epochs", "25"]
    assert demo_main(argv) == 0
    return json.load(open(out / "demo.json"))


def test_classification_accuracy(demo_result):
    assert demo_result["classify"]["top1"] >= 0.90, demo_result["classify"]


def test_retrieval_beats_raw_pixels_and_untrained_net(demo_result):
    r = demo_result["retrieval"]
    trained = r["trained"]["recall@1"]
    assert trained >= r["raw_pixels"]["recall@1"] + 0.15, r
    assert trained >= r["untrained"]["recall@1"] + 0.15, r
