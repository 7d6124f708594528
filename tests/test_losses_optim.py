"""Loss and optimizer semantics of the original recipe, on small arrays."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hrseg_jax.train import losses, optim


def _np_ce(logits, labels, weights=None, ignore=255):
  """Reference: nn.CrossEntropyLoss(weight, ignore_index) on NHWC arrays."""
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  valid = labels != ignore
  lab = np.where(valid, labels, 0)
  nll = -np.take_along_axis(logp, lab[..., None], -1)[..., 0]
  w = np.ones_like(nll) if weights is None else np.asarray(weights)[lab]
  return nll, w, valid, np.exp(-nll)


def _data(seed=0, k=4):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(2, 6, 8, k)).astype(np.float32) * 2
  labels = rng.integers(0, k, size=(2, 6, 8)).astype(np.int32)
  labels[0, :2] = 255
  return logits, labels


def test_weighted_cross_entropy_is_weighted_mean_over_valid_pixels():
  logits, labels = _data()
  w = [0.5, 1.0, 2.0, 1.5]
  nll, wp, valid, _ = _np_ce(logits, labels, w)
  expected = (nll * wp)[valid].sum() / wp[valid].sum()
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), class_weights=w)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_logits_are_upsampled_to_the_label_size():
  logits, labels = _data()
  small = jnp.asarray(logits[:, ::2, ::2])  # 3x4 -> upsampled to 6x8
  got = losses.cross_entropy(small, jnp.asarray(labels))
  up = losses.upsample_to(small, jnp.asarray(labels), False)
  assert up.shape == (2, 6, 8, 4)
  np.testing.assert_allclose(float(got), float(losses.cross_entropy(up, jnp.asarray(labels))),
                             rtol=1e-6)


def test_ohem_threshold_and_min_kept():
  logits, labels = _data(1)
  nll, wp, valid, prob = _np_ce(logits, labels)
  for min_kept, thresh in [(10, 0.9), (1000, 0.9), (5, 0.05)]:
    p = np.sort(prob[valid])
    threshold = max(p[min(min_kept, valid.sum() - 1)], thresh)
    keep = valid & (prob < threshold)
    expected = nll[keep].mean()
    got = losses.ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                    thresh=thresh, min_kept=min_kept)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_ocr_ohem_aux_term_averages_over_all_pixels():
  logits, labels = _data(2)
  nll, _, valid, _ = _np_ce(logits, labels)
  aux = np.where(valid, nll, 0).mean()  # ignored pixels count as zero
  got = losses.segmentation_loss([jnp.asarray(logits), jnp.asarray(logits)],
                                 jnp.asarray(labels), balance_weights=(0.4, 1.0),
                                 ohem=True, ohem_min_kept=1000)
  main = losses.ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                   min_kept=1000)
  np.testing.assert_allclose(float(got), 0.4 * aux + float(main), rtol=1e-5)


def _train_cfg(**kw):
  base = dict(base_lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4,
              poly_power=0.9, warmup_steps=0, nonbackbone_keywords=(),
              nonbackbone_mult=10.0, grad_accum_steps=1)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_poly_schedule_sets_each_lr_after_the_step_like_the_official_loop():
  """Step t (1-based) of T runs at base*(1 - max(t-2, 0)/T)^0.9."""
  total, base = 4, 0.01
  sched = optim.poly_schedule(base, total)
  got = [float(sched(t - 1)) for t in range(1, total + 1)]  # arg: completed steps
  want = [base * (1 - max(t - 2, 0) / total) ** 0.9 for t in range(1, total + 1)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got[2:], [0.007718895067235705, 0.005358867312681466],
                             rtol=1e-6)
  assert float(optim.poly_schedule(base, 100)(101)) == 0.0  # past the end


def test_poly_warmup_ramps_on_the_same_lagged_index():
  warm = optim.poly_schedule(0.01, 100, warmup_steps=10)
  plain = optim.poly_schedule(0.01, 100)
  assert float(warm(0)) == float(warm(1)) == np.float32(0.001)  # steps 1, 2
  assert float(warm(0)) < float(warm(5)) < float(warm(11))
  assert float(warm(11)) == float(plain(11))  # step 12: warm-up over


def test_sgd_matches_pytorch_update_rule():
  """buf = m*buf + (g + wd*p); p -= lr*buf, on every parameter; lr poly."""
  tx, sched = optim.make_optimizer(_train_cfg(), total_steps=10)
  p = {'w': jnp.array([1.0, -2.0]), 'bn': {'scale': jnp.array([0.5])}}
  state = tx.init(p)
  ref_p = jax.tree_util.tree_map(np.asarray, p)
  buf = jax.tree_util.tree_map(np.zeros_like, ref_p)
  for t in range(4):
    g = jax.tree_util.tree_map(lambda x, t=t: np.full_like(x, 0.1 * (t + 1)), ref_p)
    upd, state = tx.update(jax.tree_util.tree_map(jnp.asarray, g), state, p)
    p = optax.apply_updates(p, upd)
    lr = 0.01 * (1 - max(t - 1, 0) / 10) ** 0.9  # t: 0-based step
    buf = jax.tree_util.tree_map(lambda b, gg, pp: 0.9 * b + gg + 5e-4 * pp, buf, g, ref_p)
    ref_p = jax.tree_util.tree_map(lambda pp, b, lr=lr: pp - lr * b, ref_p, buf)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(ref_p)):
      np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6)


def test_nonbackbone_lr_multiplier_and_grad_accumulation():
  tx, _ = optim.make_optimizer(_train_cfg(weight_decay=0.0, momentum=0.0,
                                          nonbackbone_keywords=('last_layer',)), 10)
  p = {'last_layer_3': {'kernel': jnp.ones(2)}, 'conv1': {'kernel': jnp.ones(2)}}
  g = jax.tree_util.tree_map(jnp.ones_like, p)
  upd, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(float(upd['last_layer_3']['kernel'][0]), -0.1, rtol=1e-6)
  np.testing.assert_allclose(float(upd['conv1']['kernel'][0]), -0.01, rtol=1e-6)
  tx, _ = optim.make_optimizer(_train_cfg(weight_decay=0.0, momentum=0.0,
                                          grad_accum_steps=2), 10)
  s = tx.init(p)
  upd, s = tx.update(g, s, p)
  assert float(upd['conv1']['kernel'][0]) == 0.0  # accumulating
  upd, s = tx.update(jax.tree_util.tree_map(lambda x: 3 * x, g), s, p)
  np.testing.assert_allclose(float(upd['conv1']['kernel'][0]), -0.01 * 2.0, rtol=1e-6)


def test_grad_accumulation_decays_the_lr_over_the_updates():
  """With grad_accum_steps=k, T steps make T/k updates: the poly schedule
  runs over those updates (as a run without accumulation with a k times
  larger batch does), and the LR it reports for each step is the one its
  update applies."""
  steps, k = 12, 3
  tx, lr_fn = optim.make_optimizer(_train_cfg(base_lr=1.0, weight_decay=0.0, momentum=0.0,
                                              grad_accum_steps=k), steps)
  plain, _ = optim.make_optimizer(_train_cfg(base_lr=1.0, weight_decay=0.0, momentum=0.0),
                                  steps // k)
  p = {'w': jnp.zeros(1)}
  g = {'w': jnp.ones(1)}
  s, s_plain = tx.init(p), plain.init(p)
  applied = []
  for t in range(1, steps + 1):
    upd, s = tx.update(g, s, p)
    if t % k == 0:
      want, s_plain = plain.update(g, s_plain, p)
      np.testing.assert_allclose(float(upd['w'][0]), float(want['w'][0]), rtol=1e-6)
      applied.append(-float(upd['w'][0]))
      for step in range(t - k + 1, t + 1):   # the steps this update gathered
        np.testing.assert_allclose(float(lr_fn(step - 1)), applied[-1], rtol=1e-6)
  assert len(applied) == steps // k and applied[-1] < applied[0]
