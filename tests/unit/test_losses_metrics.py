"""Losses and metrics against values computed by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ptft_jax.tasks import losses, metrics


def test_cross_entropy_by_hand():
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  got = losses.softmax_cross_entropy(logits, labels)
  z = math.exp(2) + 2
  np.testing.assert_allclose(got, [-math.log(math.exp(2) / z), math.log(3)], rtol=1e-6)


def test_label_smoothing_by_hand():
  logits = jnp.array([[2.0, 0.0, 0.0]])
  got = losses.softmax_cross_entropy(logits, jnp.array([0]), label_smoothing=0.3)
  logp = np.log(np.exp([2.0, 0, 0]) / (math.exp(2) + 2))
  target = np.array([0.7 + 0.1, 0.1, 0.1])
  np.testing.assert_allclose(got, [-(target * logp).sum()], rtol=1e-6)


def test_mse_by_hand():
  pred = jnp.array([[[1.0, 2.0]], [[0.0, 0.0]]])
  target = jnp.array([[[0.0, 0.0]], [[0.0, 3.0]]])
  np.testing.assert_allclose(losses.mean_squared_error(pred, target), [2.5, 4.5])


def test_nt_xent_by_hand():
  # Two examples, 2-d projections; similarities computed by hand.
  z1 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  z2 = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  t = 0.5
  got = losses.nt_xent(z1, z2, temperature=t)
  z = np.array([[1, 0], [0, 1], [1, 0], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
  sim = z @ z.T / t

  def row_loss(i, j):
    others = [k for k in range(4) if k != i]
    return -(sim[i, j] - math.log(sum(math.exp(sim[i, k]) for k in others)))

  expected = [0.5 * (row_loss(0, 2) + row_loss(2, 0)), 0.5 * (row_loss(1, 3) + row_loss(3, 1))]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_nt_xent_prefers_aligned_views():
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(8, 16)))
  aligned = losses.nt_xent(z, z + 0.01).mean()
  shuffled = losses.nt_xent(z, z[::-1]).mean()
  assert aligned < shuffled


def test_classification_metrics_by_hand():
  labels = np.array([0, 0, 1, 1, 2, 2])
  preds = np.array([0, 1, 1, 1, 0, 2])
  m = metrics.classification_metrics(labels, preds, 3, ["a", "b", "c"])
  assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
  assert m["accuracy"] == pytest.approx(4 / 6)
  # class a: p=1/2 r=1/2; b: p=2/3 r=1; c: p=1 r=1/2
  assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
  assert m["per_class"]["c"]["recall"] == pytest.approx(0.5)
  f1 = [0.5, 2 * (2 / 3) / (5 / 3), 2 * 0.5 / 1.5]
  assert m["macro_f1"] == pytest.approx(np.mean(f1))
  assert m["macro_precision"] == pytest.approx(np.mean([0.5, 2 / 3, 1.0]))


def test_classification_metrics_absent_class_scores_zero():
  m = metrics.classification_metrics(np.array([0, 0]), np.array([0, 0]), 2)
  assert m["per_class"]["1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
  assert m["macro_f1"] == pytest.approx(0.5)
