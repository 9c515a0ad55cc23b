"""The run figures: PCA against an SVD reference, and every plot writes a
readable PNG whose texts say what is shown, from small fake inputs."""

import json

import matplotlib
import matplotlib.image
import matplotlib.text
import numpy as np
import pytest

from mcur_jax import combos
from mcur_jax import figures as run_figures
from mcur_jax import metrics
from mcur_jax import plots
from mcur_jax import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def figures(monkeypatch):
  """The figures the plots close, kept to inspect their texts."""
  closed = []
  real_close = plots.plt.close

  def close(fig):
    closed.append(fig)
    real_close(fig)

  monkeypatch.setattr(plots.plt, "close", close)
  return closed


def assert_png(path, min_side=300):
  """A PNG file that matplotlib reads back as an RGB(A) image."""
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[2] in (3, 4)
  assert min(image.shape[:2]) >= min_side
  assert image.std() > 0  # Something is drawn.


def texts(fig) -> str:
  return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def fake_results(task, runs=3, synthetic=True, seed=0, names=None):
  """A results.json-like dict with a test split summarized over `runs`;
  `names` given: only those combinations, listed under "combinations"."""
  rng = np.random.default_rng(seed)
  keys = (("f1_non0", "acc2_non0", "mae") if task == "regression"
          else ("wf1", "wa", "ua"))
  per_run = [{c: {k: float(rng.uniform(0.5, 0.9)) for k in keys}
              for c in names or combos.NAMES} for _ in range(runs)]
  results = {"dataset": "mosi" if task == "regression" else "iemocap4",
             "task": task, "headline": metrics.HEADLINE[task],
             "data": {"synthetic": synthetic},
             "test": report.summarize(per_run)}
  if names:
    results["combinations"] = list(names)
  return results


def with_missing_rate(results, runs=3, seed=1):
  rng = np.random.default_rng(seed)
  keys = (results["headline"], plots.ACCURACY[results["task"]])
  rates = {}
  for r in np.round(np.arange(0, 0.8, 0.1), 1):
    values = {k: rng.uniform(0.5, 0.9, runs) - r / 3 for k in keys}
    rates[str(r)] = {k: {"mean": float(v.mean()), "std": float(v.std(ddof=1)),
                         "per_run": v.tolist()} for k, v in values.items()}
  return {**results, "missing_rate": {"split": "test", "draws": 5,
                                      "rates": rates}}


# pca_2d.


def anisotropic(n=60, d=6, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)) * np.array([5, 3, 1, .5, .2, .1])[:d] + 7


def test_pca_2d_matches_an_svd_reference_with_the_sign_convention():
  """pca_2d = the SVD projection with the documented signs; variances are the
  top singular values squared / N."""
  x = anisotropic()
  centred = x - x.mean(0)
  _, singular, vt = np.linalg.svd(centred, full_matrices=False)
  signs = np.sign(vt[np.arange(2), np.abs(vt[:2]).argmax(1)])
  expected = centred @ (vt[:2] * signs[:, None]).T
  proj = plots.pca_2d(x)
  assert proj.shape == (60, 2)
  np.testing.assert_allclose(proj, expected, atol=1e-9)
  np.testing.assert_allclose(proj.var(0), singular[:2] ** 2 / len(x),
                             rtol=1e-9)
  np.testing.assert_allclose(proj.mean(0), 0, atol=1e-9)


def test_pca_2d_signs_are_fixed_by_the_data_not_by_the_svd():
  """Same data, same picture; -x mirrors it, a shift changes nothing."""
  x = anisotropic()
  proj = plots.pca_2d(x)
  np.testing.assert_array_equal(plots.pca_2d(x), proj)
  # Negating the data negates the picture; a shift changes nothing.
  np.testing.assert_allclose(plots.pca_2d(-x), -proj, atol=1e-9)
  np.testing.assert_allclose(plots.pca_2d(x + 100), proj, atol=1e-8)
  # The loading of largest magnitude is positive: recover it by regression.
  loadings, *_ = np.linalg.lstsq(proj, x - x.mean(0), rcond=None)
  largest = loadings[np.arange(2), np.abs(loadings).argmax(1)]
  assert (largest > 0).all()


def test_pca_2d_of_a_single_feature_pads_a_zero_coordinate():
  """One feature: the centred values, and a zero second coordinate."""
  proj = plots.pca_2d(np.arange(5.0)[:, None])
  np.testing.assert_allclose(proj[:, 0], np.arange(5.0) - 2)
  np.testing.assert_array_equal(proj[:, 1], 0)


# combination_bars and missing_rate_curve.


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_combination_bars_writes_a_labelled_png(tmp_path, figures, task):
  """7 combinations + Avg, 2 metrics each; the title says runs, split, metrics
  and synthetic data."""
  path = tmp_path / "bars.png"
  plots.combination_bars(fake_results(task), str(path))
  assert_png(path)
  (fig,) = figures
  shown = texts(fig)
  assert "mean ± std over 3 runs" in shown and "SYNTHETIC DATA" in shown
  assert "test" in shown and metrics.HEADLINE[task] in shown
  assert plots.ACCURACY[task] in shown
  assert len(fig.axes[0].patches) == 16  # 8 groups × 2 metrics.
  assert not plots.plt.get_fignums()


def test_combination_bars_of_the_realisable_combinations(tmp_path, figures):
  """A run on a, t, at only (no video): 3 groups + Avg, ticks and the
  x label say so, no other combination appears."""
  path = tmp_path / "bars.png"
  plots.combination_bars(
      fake_results("classification", names=["a", "t", "at"]), str(path))
  assert_png(path)
  (fig,) = figures
  ax = fig.axes[0]
  assert len(ax.patches) == 8  # 4 groups × 2 metrics.
  assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "t", "at",
                                                          "Avg"]
  assert "Avg = mean over the 3" in ax.get_xlabel()
  assert "atv" not in texts(fig).split("\n")


def test_combination_bars_skips_none_and_omits_the_tag_on_real_data(
    tmp_path, figures):
  """A None mean draws no bar but 'n/a'; 1 run is singular; real data has no
  tag."""
  results = fake_results("regression", runs=1, synthetic=False)
  results["test"]["at"]["f1_non0"].update(mean=None, std=None)
  results["test"]["avg"]["acc2_non0"]["std"] = None
  path = tmp_path / "bars.png"
  plots.combination_bars(results, str(path))
  assert_png(path)
  shown = texts(figures[0])
  assert len(figures[0].axes[0].patches) == 15
  assert "n/a" in shown and "mean ± std over 1 run" in shown
  assert "1 runs" not in shown
  assert "SYNTHETIC" not in shown


def test_combination_bars_plots_the_valid_split(tmp_path, figures):
  """split='valid' plots and names the validation split."""
  results = fake_results("classification")
  results["valid"] = results.pop("test")
  plots.combination_bars(results, str(tmp_path / "v.png"), split="valid")
  assert "iemocap4 valid" in texts(figures[0])


def test_missing_rate_curve_writes_a_png_and_tolerates_none(tmp_path,
                                                            figures):
  """The curve over the rates, with a None point; the axis says GCNet and the
  draws."""
  results = with_missing_rate(fake_results("regression"))
  results["missing_rate"]["rates"]["0.3"]["f1_non0"].update(mean=None,
                                                            std=None)
  path = tmp_path / "rates.png"
  plots.missing_rate_curve(results, str(path))
  assert_png(path)
  shown = texts(figures[0])
  assert "missing rate r (GCNet semantics, 5 draws)" in shown
  assert "mean ± std over 3 runs" in shown and "SYNTHETIC DATA" in shown
  assert "0.7" in shown  # Rates are ticks, sorted numerically.


def test_missing_rate_curve_needs_the_missing_rate_entry(tmp_path):
  """No missing_rate entry: KeyError, and no file."""
  with pytest.raises(KeyError, match="missing_rate"):
    plots.missing_rate_curve(fake_results("regression"),
                             str(tmp_path / "x.png"))
  assert not (tmp_path / "x.png").exists()


# training_curves.


def write_metrics(path, conditions=(None,), seeds=(0, 1), epochs=4):
  """A metrics.jsonl in `report.MetricsLog`'s format, with some nulls."""
  rng = np.random.default_rng(0)
  with open(path, "w") as f:
    for epoch in range(1, epochs + 1):
      for condition in conditions:
        for seed in seeds:
          valid = {c: {"f1_non0": float(rng.uniform(0.5, 0.9)), "mae": 1.0}
                   for c in (combos.NAMES if condition is None
                             else (condition,))}
          line = {"epoch": epoch, "seed": seed,
                  "train": {"loss": 2.0 / epoch, "task_loss": 1.0 / epoch,
                            "mcb_loss": None if epoch == 1 else 0.5,
                            "sugr_weight": 1.0},
                  "valid": valid,
                  "valid_avg_f1_non0": (None if seed == 1 and epoch == 2 else
                                        float(rng.uniform(0.5, 0.9)))}
          if condition is not None:
            line["condition"] = condition
          f.write(json.dumps(line) + "\n")


def test_training_curves_of_a_joint_run(tmp_path, figures):
  """One joint run of 2 seeds: every combination's curve and the selected
  epochs (×2)."""
  log, path = tmp_path / "metrics.jsonl", tmp_path / "curves.png"
  write_metrics(log)
  plots.training_curves(str(log), "f1_non0", str(path), selected_epoch=[3, 3])
  assert_png(path)
  shown = texts(figures[0])
  assert "mean over 2 runs" in shown and "conditions" not in shown
  assert "validation f1_non0" in shown and "×2" in shown
  assert all(c in shown.split("\n") for c in combos.NAMES)


def test_training_curves_of_per_condition_runs(tmp_path, figures):
  """Per-condition runs: the title counts conditions × seeds, the legend only
  their combinations."""
  log, path = tmp_path / "metrics.jsonl", tmp_path / "curves.png"
  write_metrics(log, conditions=("a", "tv"), seeds=(0, 1))
  plots.training_curves(str(log), "f1_non0", str(path),
                        selected_epoch=[1, 2, 4, 4])
  assert_png(path)
  shown = texts(figures[0])
  assert "4 runs (2 conditions" in shown
  legend = shown.split("\n")
  assert "a" in legend and "tv" in legend and "atv" not in legend


def test_training_curves_without_selected_epochs(tmp_path):
  """One epoch and no selected epochs still draw."""
  log, path = tmp_path / "metrics.jsonl", tmp_path / "curves.png"
  write_metrics(log, epochs=1)
  plots.training_curves(str(log), "f1_non0", str(path))
  assert_png(path)


# representation_map and uncertainty_plot.


def fake_reps(n, d=8, seed=0, combinations=7):
  """Two representations [C, n, *] of n samples in 3 categories."""
  rng = np.random.default_rng(seed)
  category = rng.integers(0, 3, n)
  centres = rng.normal(size=(3, d)) * 3
  h = centres[category] + rng.normal(size=(combinations, n, d))
  return {"h (fused)": h, "z (MCB-CL projection)": h[..., :4] * 2}, category


def scatter_points(fig):
  return [c.get_offsets().shape[0] for ax in fig.axes for c in ax.collections]


def test_representation_map_draws_every_sample_of_a_small_set(tmp_path,
                                                              figures):
  """Under MAX_POINTS: every (sample, combination) point in each of the 4
  panels."""
  reps, category = fake_reps(40)
  path = tmp_path / "map.png"
  plots.representation_map(reps, list(combos.NAMES), category,
                           ["neg", "neu", "pos"], str(path),
                           "mosi test [SYNTHETIC DATA]")
  assert_png(path)
  (fig,) = figures
  assert scatter_points(fig) == [7 * 40] * 4  # 2 reps × 2 panels.
  shown = texts(fig)
  assert "SYNTHETIC DATA" in shown and "drawn at random" not in shown
  assert "z (MCB-CL projection): coloured by combination" in shown
  assert "neu" in shown and "atv" in shown


def test_representation_map_subsamples_the_same_samples_each_time(tmp_path,
                                                                  figures):
  """Over MAX_POINTS: a fixed-seed subsample, the same in two calls, and the
  title says so."""
  n = plots.MAX_POINTS + 100
  reps, category = fake_reps(n)
  reps = {"h (fused)": reps["h (fused)"]}
  for name in ("one.png", "two.png"):
    plots.representation_map(reps, combos.NAMES, category,
                             ["neg", "neu", "pos"], str(tmp_path / name),
                             "mosi test")
  assert_png(tmp_path / "one.png")
  one, two = figures
  assert scatter_points(one) == [7 * plots.MAX_POINTS] * 2
  assert f"{plots.MAX_POINTS} of {n} samples drawn at random" in texts(one)
  np.testing.assert_array_equal(one.axes[0].collections[0].get_offsets(),
                                two.axes[0].collections[0].get_offsets())


def test_representation_map_of_three_combinations(tmp_path, figures):
  """Combinations a, t, at: 3 points per sample in every panel, coloured
  with those combinations' shared colours, legend and title of 3."""
  names = ["a", "t", "at"]
  reps, category = fake_reps(30, combinations=3)
  path = tmp_path / "map.png"
  plots.representation_map(reps, names, category, ["neg", "neu", "pos"],
                           str(path), "iemocap4 test")
  assert_png(path)
  (fig,) = figures
  assert scatter_points(fig) == [3 * 30] * 4
  shown = texts(fig)
  assert "all 3 × 30 points" in shown and "30 samples × 3 combinations" in (
      shown)
  legend = shown.split("\n")
  assert all(c in legend for c in names)
  assert not {"v", "av", "tv", "atv"} & set(legend)
  right = fig.axes[1].collections[0].get_facecolors()[:, :3]
  colours = {tuple(np.round(c, 6)) for c in right}
  assert colours == {tuple(np.round(plots.COMBO_COLORS[c], 6))
                     for c in names}


@pytest.mark.parametrize("task,k,task_loss", [("regression", 1, "l1"),
                                              ("regression", 1, "mse"),
                                              ("classification", 4, "l1")])
def test_uncertainty_plot_reports_the_metrics_values(tmp_path, figures, task,
                                                     k, task_loss):
  """The panels quote metrics.uncertainty's ECE and Spearman and the scored
  count."""
  rng = np.random.default_rng(0)
  n = 300
  s = rng.normal(size=n)
  if task == "regression":
    label = np.round(rng.uniform(-3, 3, n), 1)
    outputs = (label + rng.normal(size=n) * np.exp(s))[:, None]
  else:
    label = rng.integers(0, k, n)
    outputs = rng.normal(size=(n, k)) + 2 * np.eye(k)[label]
  path = tmp_path / "unc.png"
  plots.uncertainty_plot(task, outputs, label, s, str(path), task_loss,
                         title="mosi test")
  assert_png(path)
  scores = metrics.uncertainty(task, outputs, label, s, task_loss)
  shown = texts(figures[0])
  assert f"ECE = {scores['ece']:.3f}" in shown
  assert f"Spearman ρ = {scores['s_err_spearman']:.3f}" in shown
  scored = len(metrics.decisions(task, outputs, label, s, task_loss)[0])
  assert f"mosi test: SUGR uncertainty over {scored} " in shown


def test_uncertainty_plot_without_scored_samples_fails_clearly(tmp_path):
  """All-zero regression labels: nothing scored, a clear ValueError."""
  with pytest.raises(ValueError, match="no scored sample"):
    plots.uncertainty_plot("regression", np.ones((5, 1)), np.zeros(5),
                           np.zeros(5), str(tmp_path / "x.png"), "l1")


def test_categories_are_named_by_the_manifests_classes():
  """The representation map's legend names classes as the manifest does
  (class indices without it); regression categories by their sign."""
  label = np.array([2, 0, 2, 3])
  index, names = run_figures.categories("classification", label, "sign",
                                    ["hap", "sad", "neu", "ang"])
  assert [names[i] for i in index] == ["neu", "hap", "neu", "ang"]
  assert run_figures.categories("classification", label, "sign")[1] == [
      "0", "2", "3"]
  index, names = run_figures.categories("regression", np.array([-1.5, 0.0, 2.0]),
                                    "sign")
  assert [names[i] for i in index] == ["negative (< 0)", "non-negative (>= 0)",
                                       "non-negative (>= 0)"]
