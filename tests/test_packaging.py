"""The distribution: the wheel built from this checkout holds the packages
and nothing else, runs from any directory once installed into a fresh
virtual environment, and LICENSE and CITATION.cff say what they should."""

import ast
import configparser
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile

import pytest

from data_prep import synthetic
from data_prep import writer
from mcur_jax import schema

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = {"mcur_jax", "data_prep", "experiments"}
# What a checkout may hold beside the sources, none of it for the wheel.
LOCAL = ("prepared", "runs", ".venv", ".git", "build", "dist", "*.egg-info",
         "__pycache__", ".pytest_cache", ".hypothesis", ".whl")


def _version() -> str:
  return re.search(r"^version = (\S+)$", (ROOT / "setup.cfg").read_text(),
                   re.M)[1]


def _missing_build_requirement() -> str | None:
  """The first build requirement of pyproject.toml not installed here (the
  wheel is built offline, without build isolation), else None."""
  requirements = pytest.importorskip("packaging.requirements")
  with open(ROOT / "pyproject.toml", "rb") as f:
    needed = tomllib.load(f)["build-system"]["requires"]
  for text in needed:
    requirement = requirements.Requirement(text)
    try:
      version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
      return text
    if not requirement.specifier.contains(version, prereleases=True):
      return text
  return None


def _run(*command, cwd=None) -> subprocess.CompletedProcess:
  """Runs `command` as a user would: no PYTHONPATH pointing at a checkout."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([str(c) for c in command], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  """The wheel of a copy of this checkout to which data, runs and a
  virtual environment have been added."""
  for module in ("pip", "venv"):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f"no {module} module in this Python")
  missing = _missing_build_requirement()
  if missing:
    pytest.skip(f"build requirement {missing} is not installed")
  source = tmp_path_factory.mktemp("checkout") / "mcur-jax"
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LOCAL))
  for path in ("prepared/mosi/manifest.json", "runs/mosi/config.json",
               ".venv/pyvenv.cfg"):
    (source / path).parent.mkdir(parents=True)
    (source / path).write_text("{}")
  out = source.parent / "dist"
  result = _run(sys.executable, "-m", "pip", "wheel", "--no-deps",
                "--no-build-isolation", "--no-index", "-q", "-w", out, source)
  assert result.returncode == 0, result.stderr
  [built] = out.glob("mcur_jax-*.whl")
  return built


def test_wheel_holds_the_packages_and_license_only(wheel):
  """The three packages' .py files (experiments' configs and sweep files
  among them) and LICENSE; nothing of the prepared/, runs/ and .venv/
  planted in the copy, nor tests/."""
  names = zipfile.ZipFile(wheel).namelist()
  dist_info = f"mcur_jax-{_version()}.dist-info"
  assert {n.split("/")[0] for n in names} == PACKAGES | {dist_info}
  assert f"{dist_info}/licenses/LICENSE" in names
  for shipped in ("experiments/launch.py", "experiments/configs/mosi.py",
                  "experiments/configs/iemocap.py",
                  "experiments/sweeps/ablation.py"):
    assert shipped in names
  assert not [n for n in names
              if n.split("/")[0] in PACKAGES and not n.endswith(".py")]


def test_installed_entry_points_run_from_any_directory(wheel, tmp_path):
  """Installed with `pip install --no-deps` into a new virtual environment
  (its dependencies from this Python's site-packages), run from an empty
  directory: the packages are the installed ones, and the documented
  relative `--config experiments/configs/...` is found in the installed
  package (a config that failed to load would end in a traceback, not in
  the manifest's error)."""
  env = tmp_path / "venv"
  result = _run(sys.executable, "-m", "venv", "--without-pip", env)
  assert result.returncode == 0, result.stderr
  python = env / "bin" / "python"
  purelib = _run(python, "-c", "import sysconfig; "
                 "print(sysconfig.get_path('purelib'))").stdout.strip()
  # Plain paths: the .pth files there (an editable install of this
  # checkout) stay unread.
  dependencies = site.getsitepackages() + (
      [site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
  pathlib.Path(purelib, "dependencies.pth").write_text(
      "\n".join(dependencies) + "\n")
  result = _run(sys.executable, "-m", "pip", "--python", python, "install",
                "--no-deps", "--no-index", "-q", wheel)
  assert result.returncode == 0, result.stderr
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  result = _run(python, "-c", "import data_prep, experiments, mcur_jax; "
                "print(data_prep.__file__, experiments.__file__, "
                "mcur_jax.__file__)", cwd=cwd)
  assert result.stdout.split() == [
      os.path.join(purelib, p, "__init__.py") for p in
      ("data_prep", "experiments", "mcur_jax")], result.stderr
  result = _run(python, "-m", "experiments.mosi", "--help", cwd=cwd)
  assert result.returncode == 1, result.stderr  # absl's status after help
  assert result.stdout.startswith("Trains and evaluates MCUR on MOSI")
  data = tmp_path / "iemocap6"
  writer.write(synthetic.generate("iemocap6", 0, 0.02), data)
  result = _run(python, "-m", "experiments.iemocap", "--data_dir", data,
                "--config", "experiments/configs/iemocap.py:tiny",
                "--config.dataset=iemocap4", cwd=cwd)
  assert result.returncode == 2, result.stderr
  assert result.stderr.splitlines() == [
      f"error: {data / schema.MANIFEST}: dataset: 'iemocap6', but "
      "--config.dataset is 'iemocap4'; leave --config.dataset out to train "
      "on 'iemocap6'"]
  assert os.listdir(cwd) == []


def _imported_modules(folder: pathlib.Path) -> set[str]:
  """Top-level names of the modules the .py files under `folder` import."""
  names = set()
  for path in folder.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names |= {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom) and not node.level:
        names.add(node.module.split(".")[0])
  return names


def _declared(extras: bool) -> set[str]:
  """Distribution names setup.cfg requires (and its extras, if asked)."""
  config = configparser.ConfigParser()
  config.read(ROOT / "setup.cfg")
  lines = config["options"]["install_requires"].split()
  if extras:
    lines += " ".join(config["options.extras_require"].values()).split()
  return {_normalized(re.split(r"[<>=!~;\[ ]", line)[0]) for line in lines
          if line and line[0].isalpha()}


def _normalized(distribution: str) -> str:
  return re.sub(r"[-_.]+", "-", distribution).lower()  # PEP 503


def test_every_imported_distribution_is_declared():
  """What the packages import is in install_requires (optional imports,
  tensorflow and tensorboardX, in an extra); the tests' imports in the
  `test` extra or install_requires. Found through the installed
  distributions that provide each module, so a dependency that only
  arrives with another (absl-py, with jax) is caught."""
  provides = importlib.metadata.packages_distributions()
  optional = {"tensorflow", "tensorboardX"}
  for folders, extras in ((PACKAGES, False), ({"tests", "benchmarks"}, True)):
    used = set().union(*(_imported_modules(ROOT / f) for f in folders))
    used -= set(sys.stdlib_module_names) | PACKAGES | {"tests", "benchmarks",
                                                       "__future__"}
    if not extras:
      used -= optional
    missing = sorted(
        name for name in used
        if not {_normalized(d) for d in provides.get(name, [name])}
        & _declared(extras))
    assert not missing, f"{sorted(folders)} import undeclared {missing}"


def test_data_walks_one_way():
  """DESIGN section 8: data_prep -> TFRecords -> mcur_jax; the library
  imports neither the converters nor the entry points (which import it)."""
  assert not _imported_modules(ROOT / "mcur_jax") & {"data_prep",
                                                     "experiments"}
  assert "experiments" not in _imported_modules(ROOT / "data_prep")


def test_license_is_apache_2():
  text = (ROOT / "LICENSE").read_text()
  assert text.startswith("Copyright 2026 The mcur-jax Authors\n")
  assert "Apache License\n                           Version 2.0" in text
  assert re.search(r"^license = Apache-2.0$", (ROOT / "setup.cfg").read_text(),
                   re.M)


def test_citation_cff_cites_this_version_and_the_paper():
  """CITATION.cff has CFF 1.2.0's required keys, this package's version and
  license, and the MCUR paper among its references."""
  yaml = pytest.importorskip("yaml")
  cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
  assert {"cff-version", "message", "title", "authors"} <= cff.keys()
  assert cff["cff-version"] == "1.2.0"
  assert cff["version"] == _version() and cff["license"] == "Apache-2.0"
  [paper] = cff["references"]
  assert paper["title"] == ("Modality-Aware Contrastive and "
                            "Uncertainty-Regularized Emotion Recognition")
  assert paper["type"] == "article" and paper["authors"]
  assert "arXiv:2605.06245" in [i["value"] for i in paper["identifiers"]]
