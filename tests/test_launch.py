"""What the entry points share (experiments/launch.py): the dataset taken
from a prepared directory's manifest, config files and their overrides,
files found in the package, and the flags --help lists."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from data_prep import convert
from data_prep import synthetic
from data_prep import writer
from experiments import launch
from experiments import sweep_report as sweep_report_cli
from experiments.configs import iemocap as iemocap_config
from experiments.configs import mosei as mosei_config
from experiments.configs import mosi as mosi_config
from mcur_jax import schema
from tests import runs


@pytest.fixture(scope="module")
def iemocap6_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("data") / "iemocap6"
  writer.write(synthetic.generate("iemocap6", 0, 0.02), out)
  return out


def config_on(base, data_dir):
  config = base.get_config("tiny")
  config.data_dir = str(data_dir)
  return config


def test_dataset_comes_from_the_manifest(iemocap6_dir):
  """The IEMOCAP config (iemocap4) on an iemocap6 directory trains iemocap6."""
  config = config_on(iemocap_config, iemocap6_dir)
  launch.take_dataset(config, explicit=False)
  assert config.dataset == "iemocap6"


def test_a_dataset_of_ones_own_trains_and_predicts(tmp_path):
  """A classification set of one's own (its name, its 3 classes, text and
  video only) trains through `experiments.iemocap`, taking its dataset from
  the manifest, and predicts with its class names."""
  rng = np.random.default_rng(0)
  n = 120
  label = rng.integers(0, 3, n)
  path = tmp_path / "own.npz"
  np.savez(path, text=rng.normal(size=(n, 6)) + label[:, None],
           video=rng.normal(size=(n, 4)), label=label,
           group_id=np.repeat(np.arange(20), 6),
           session=np.repeat(np.arange(20) % 2 + 1, 6))
  assert convert.main(["--format", "npz", "--dataset", "own3", "--classes",
                       "neg,neu,pos", "--input", str(path), "--out",
                       str(tmp_path / "data")]) == 0
  result = runs.cli("--data_dir", tmp_path / "data", "--workdir",
                    tmp_path / "run", "--config",
                    f"{launch.CONFIGS}/iemocap.py:tiny", "--config.fold=1",
                    "--config.num_epochs=1", "--config.seeds=0",
                    "--config.speaker_norm=", dataset="iemocap")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("own3 fold 1/2 (test: session 1)")
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["dataset"] == "own3"
  assert set(results["test"]) == {"t", "v", "tv", "avg"}
  predicted = subprocess.run(
      [sys.executable, "-m", "experiments.predict", "--workdir",
       str(tmp_path / "run"), "--out", str(tmp_path / "p.csv")],
      cwd=runs.ROOT, env=runs.environment(), capture_output=True, text=True,
      timeout=300)
  assert predicted.returncode == 0, predicted.stderr
  header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
  assert {"class_name", "p_neg", "p_neu", "p_pos"} <= set(header)


def test_explicit_dataset_must_match_the_manifest(iemocap6_dir):
  """--config.dataset=iemocap4 on an iemocap6 directory: DataError naming
  the manifest and its `dataset` field; --config.dataset=iemocap6 runs."""
  config = config_on(iemocap_config, iemocap6_dir)
  with pytest.raises(schema.DataError) as e:
    launch.take_dataset(config, explicit=True)
  assert str(e.value).startswith(
      f"{iemocap6_dir / schema.MANIFEST}: dataset: 'iemocap6', but "
      "--config.dataset is 'iemocap4'")
  config.dataset = "iemocap6"
  launch.take_dataset(config, explicit=True)


def test_config_of_the_other_task_is_refused(iemocap6_dir):
  """The MOSI config (regression) on IEMOCAP data (classification): its
  fields were chosen for the other task, so DataError naming the task and
  the entry point to use."""
  config = config_on(mosi_config, iemocap6_dir)
  with pytest.raises(schema.DataError) as e:
    launch.take_dataset(config, explicit=False)
  message = str(e.value)
  assert message.startswith(f"{iemocap6_dir / schema.MANIFEST}: task: "
                            "'classification' (dataset 'iemocap6')")
  assert "python -m experiments.iemocap" in message
  assert config.dataset == "mosi"


def test_task_is_checked_when_the_dataset_name_matches(tmp_path):
  """Classification data named mosi (the Poria features converted without
  --labels) under the MOSI config: the same DataError naming the task,
  not a config error about task_loss."""
  table = synthetic.generate("iemocap6", 0, 0.02)
  table.dataset = "mosi"
  writer.write(table, tmp_path / "mosi")
  config = config_on(mosi_config, tmp_path / "mosi")
  with pytest.raises(schema.DataError, match=r"task: 'classification' "
                     r"\(dataset 'mosi'\), but this config \(dataset "
                     r"'mosi', task_loss 'mse'\) is for regression"):
    launch.take_dataset(config, explicit=False)


def test_cli_takes_the_dataset_without_config_dataset(iemocap6_dir, tmp_path):
  """`python -m experiments.iemocap --data_dir IEMOCAP6` gets past the
  config's dataset check (`validate.check` compares the dataset first) to
  the next bad field, a 0-epoch run, which stops it before any compiling."""
  result = runs.cli("--data_dir", iemocap6_dir, "--workdir", tmp_path,
                    "--config", f"{launch.CONFIGS}/iemocap.py:tiny",
                    "--config.num_epochs=0", "--config.fold=1",
                    dataset="iemocap", env=dict(os.environ))
  assert result.returncode == 2, result.stderr
  assert runs.error_lines(result.stderr) == [
      "error: config.num_epochs: 0, must be >= 1"]


def test_package_file_finds_shipped_files_from_anywhere(tmp_path,
                                                        monkeypatch):
  """A relative path into the package that the working directory lacks
  names the package's file; any other path stays as given."""
  monkeypatch.chdir(tmp_path)
  found = launch.package_file("experiments/sweeps/ablation.py")
  assert pathlib.Path(found) == pathlib.Path(
      launch.PACKAGE_ROOT, "experiments", "sweeps", "ablation.py")
  assert os.path.isfile(found)
  for path in ("experiments/configs/missing.py", "configs/mosi.py",
               str(tmp_path / "experiments/configs/mosi.py")):
    assert launch.package_file(path) == path
  (tmp_path / "experiments" / "configs").mkdir(parents=True)
  (tmp_path / "experiments" / "configs" / "mosi.py").write_text("")
  assert launch.package_file("experiments/configs/mosi.py") == (
      "experiments/configs/mosi.py")


def test_missing_config_file_is_one_flag_error(tmp_path):
  """A --config file that is not there stops flag parsing with one line
  naming the flag and the file (ml_collections alone defers the failure to
  the first use of the config, a traceback)."""
  result = runs.cli("--workdir", tmp_path, "--config", "missing.py:tiny",
                    env=dict(os.environ))
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert ("flag --config=missing.py:tiny: missing.py: no such config file"
          in result.stderr)


def test_unknown_config_variant_is_one_flag_error(tmp_path):
  """FILE:ARG with an ARG the config does not know: one line naming the
  flag, the file and the known variants, not get_config's traceback."""
  result = runs.cli("--workdir", tmp_path, "--config",
                    "experiments/configs/mosi.py:huge", env=dict(os.environ))
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert ("flag --config=experiments/configs/mosi.py:huge: "
          "experiments/configs/mosi.py: unknown config variant 'huge' "
          "(known: tiny)" in result.stderr)


@pytest.mark.parametrize("config", [None, "experiments/configs/mosi.py:tiny"])
def test_misspelt_config_field_is_one_flag_error(tmp_path, config):
  """`--config.FIELD` naming no field stops flag parsing with absl's one
  line, naming the override and the closest field, whether the config is
  the default (parsed as the flag is defined) or given (parsed with the
  flags); ml_collections alone raises AttributeError, a traceback."""
  given = ["--config", config] if config else []
  result = runs.cli("--workdir", tmp_path, *given,
                    "--config.learnig_rate=1e-3", env=dict(os.environ))
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert ("--config.learnig_rate: no such config field; did you mean "
          "'learning_rate'?") in result.stderr
  assert not any(tmp_path.iterdir())


def test_config_overrides_are_checked_against_the_config(monkeypatch):
  """Every --config.PATH of the command line must name a field: a
  misspelt one gets the closest field, a path into a plain value or an
  index into a tuple (which ml_collections cannot set) says so; real
  fields, nested ones and --noconfig.x pass."""
  config = mosi_config.get_config("tiny")
  with config.unlocked():  # The configs are locked: a field of the test's.
    config.extra = {"alpha": 1}
  def check(*args):
    monkeypatch.setattr(sys, "argv", ["prog", *args])
    launch._check_overrides("config", config)
  check("--config.learning_rate=1", "--noconfig.plots", "--config.extra.alpha",
        "2", "--workdir=x")
  for arg, message in [
      ("--config.lerning_rate=1", "--config.lerning_rate: no such config "
       "field; did you mean 'learning_rate'?"),
      # A name people reach for, where spelling alone says 'num_heads'.
      ("--config.num_seeds=1", "--config.num_seeds: no such config field; "
       "did you mean 'seeds'?"),
      ("--config.lr=1", "--config.lr: no such config field; did you mean "
       "'learning_rate'?"),
      ("--config.extra.beta=1", "--config.extra.beta: no such config field"),
      ("--config.tau.x=1", "--config.tau.x: 'x' is inside a float, not a "
       "config"),
      ("--config.seeds[0]=3", "--config.seeds[0]: seeds is a tuple; set it "
       "whole (--config.seeds=a,b,...)")]:
    with pytest.raises(ValueError) as e:
      check(arg)
    assert str(e.value).startswith(message), (arg, str(e.value))


@pytest.mark.parametrize("variant", [None, "tiny"])
def test_configs_refuse_a_misspelt_field_from_python(variant):
  """From Python, as on the command line, a field the configs do not have
  is an error with the closest one (it used to be set beside the real
  one, which kept its default)."""
  for base in (mosi_config, iemocap_config, mosei_config):
    config = base.get_config(variant)
    with pytest.raises(AttributeError, match='Did you mean "num_epochs"'):
      config.num_epoch = 5
    config.num_epochs = 5  # The fields themselves still take values.


def test_data_dir_flag_overrides_a_config_files_data_dir(iemocap6_dir,
                                                         tmp_path):
  """--data_dir wins over a data_dir set in a config file (only a
  --config.data_dir of the same command line conflicts with it): the run
  gets past the data to the 0-epoch error."""
  config = tmp_path / "cfg.py"
  config.write_text(
      "from experiments.configs import iemocap\n\n\n"
      "def get_config(arg=None):\n"
      "  c = iemocap.get_config('tiny')\n"
      f"  c.data_dir = {str(tmp_path / 'elsewhere')!r}\n"
      "  return c\n")
  for fold in (1, 0):  # Refused runs leave no workdir, nor fold folders.
    result = runs.cli("--data_dir", iemocap6_dir, "--workdir", tmp_path / "w",
                      "--config", config, "--config.num_epochs=0",
                      f"--config.fold={fold}", dataset="iemocap",
                      env=dict(os.environ))
    assert result.returncode == 2, result.stderr
    assert runs.error_lines(result.stderr) == [
        "error: config.num_epochs: 0, must be >= 1"]
    assert not (tmp_path / "w").exists(), fold


def test_sweep_report_help_and_usage(capsys):
  """`experiments.sweep_report` prints its docstring for --help and the
  like, and a usage line (exit 2) for a flag it does not take, instead of
  reading the flag as a workdir."""
  assert sweep_report_cli.main(["--helpshort"]) == 0
  assert "sweep_report WORKDIR" in capsys.readouterr().out
  assert sweep_report_cli.main(["--verbose"]) == 2
  assert capsys.readouterr().err.startswith("usage: ")


def test_two_data_dirs_are_refused(iemocap6_dir, tmp_path):
  """--data_dir and --config.data_dir naming two directories is an error
  naming both, not one of them silently winning (before it, a run would
  stop at the 0 epochs)."""
  result = runs.cli("--data_dir", iemocap6_dir, "--workdir", tmp_path,
                    f"--config.data_dir={tmp_path}",
                    "--config.num_epochs=0", dataset="iemocap",
                    env=dict(os.environ))
  assert result.returncode == 2, result.stderr
  assert runs.error_lines(result.stderr) == [
      f"error: --data_dir: {iemocap6_dir}, but --config.data_dir is "
      f"{tmp_path}; give one of them"]


def test_help_lists_the_entry_points_flags():
  """`--help` of a training entry point lists its flags (absl lists only
  the main module's own), and so do evaluate's and predict's."""
  result = runs.cli("--help", env=dict(os.environ))
  for flag in ("--config", "--data_dir", "--workdir", "--compilation_cache"):
    assert f"  {flag}:" in result.stdout, flag
  for module in ("evaluate", "predict"):
    result = subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", "--help"],
        cwd=runs.ROOT, capture_output=True, text=True, timeout=120)
    for flag in ("--workdir", "--compilation_cache"):
      assert f"  {flag}:" in result.stdout, (module, flag)
