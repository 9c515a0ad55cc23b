"""Training speed: compile time, throughput, the parts of an epoch, FLOP/s
against the machine's matmul peak, and scaling over seeds and devices.

    python benchmarks/bench_train.py [--mosi DIR] [--iemocap DIR] [--fold 1]
        [--mosei_scale 1.0] [--models default,context_layers=0]
        [--epochs 2] [--seeds 1,5,20] [--devices 8] [--set FIELD=VALUE ...]
        [--json FILE] [--short]

Cases: real MOSI (`--mosi`, default prepared/mosi), real IEMOCAP-4
(`--iemocap`, default prepared/iemocap4; one fold, `--fold`), each skipped
when its directory is absent, and a synthetic MOSEI-sized set
(`data_prep.synthetic`, 22,856 utterances at `--mosei_scale` 1; 0 skips
it), each with its experiment config ("default") and with
`context_layers=0` (the per-utterance model), as `--models` says; `--set`
overrides config fields of every case. `--short` replaces them with a tiny
synthetic MOSI on the tiny config (seconds; for CI).

Per case, one `fit.fit` of 1 + `--epochs` epochs on the default seeds,
with its compiled functions timed from outside:
* setup: `Run.setup` (data to device, model, the initial state's compiled
  initialisation); compile: the seconds JAX reports (`jax.monitoring`)
  tracing, lowering and compiling the epoch, the evaluation chunk and the
  initialisation;
* the steady epoch split into train (the compiled `lax.scan` epoch),
  valid (the per-epoch validation predict of every combination the
  dataset realises), ckpt (a checkpoint save: after every epoch here,
  `checkpoint_seconds` 0, where the configs save at most every 30 s) and
  host (the rest of fit's epoch: stats to host,
  metrics, selection, logging);
* train utterances/s and eval utterances/s (the fixed protocol's predict
  on test), counting every seed (and every combination);
* FLOPs of one epoch from XLA's cost analysis of the compiled epoch (which
  counts the scan's body once: it is multiplied by the steps, the epoch's
  plan outside the scan added once), the achieved FLOP/s, and their ratio
  to the matmul peak this script measures (a square float32 `jnp.dot`,
  best of several); the bytes the epoch's operations access (XLA's count,
  likewise) against the memory bandwidth measured alike; and the FLOP/s of
  a matmul at the model's largest shape (the fusion MLP's first layer:
  [seeds, 4 tokens x batch, hidden] x [hidden, mlp_ratio x hidden])
  against the peak;
* the bytes fit brings to the host per epoch, and whether the compiled
  epoch calls the host (callbacks, outfeed, send/recv in its HLO; and one
  epoch run with host-device transfers disallowed, `jax.transfer_guard`).

Scaling, on each dataset's first model (`--models`; the default config):
the steady epoch with 1, 5 and 20 vmapped seeds (the trained state's first
seed repeated) relative to 1 seed; and, for the first case, 1 against
`--devices` devices, in a subprocess that starts JAX with that many fake
CPU devices.

Runs on whatever backend JAX finds by default (JAX_PLATFORMS picks one);
the device subprocess is always CPU.
"""

import argparse
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from data_prep import synthetic
from data_prep import writer
from experiments.configs import iemocap as iemocap_config
from experiments.configs import mosei as mosei_config
from experiments.configs import mosi as mosi_config
from mcur_jax import checkpoint
from mcur_jax import epoch as epoch_lib
from mcur_jax import evaluation
from mcur_jax import fit as fit_lib
from mcur_jax import groups
from mcur_jax import run as run_lib
from mcur_jax import sweep
from mcur_jax import timing
from mcur_jax import transfer
from mcur_jax import workdir as workdir_lib

CONFIGS = {"mosi": mosi_config, "iemocap": iemocap_config,
           "mosei": mosei_config}
VARIANTS = {"default": {}, "context_layers=0": {"context_layers": 0}}
# HLO instructions through which a compiled program reaches the host.
HOST_CALLS = ("callback", "outfeed", "infeed", " send(", " recv(",
              "send-done", "recv-done")


@dataclasses.dataclass(frozen=True)
class Case:
  """A dataset to benchmark: its config module (CONFIGS), prepared data and
  fold (0: fixed splits)."""

  name: str
  config: str
  data_dir: str
  fold: int = 0


def make_config(case: Case, short: bool, overrides=()):
  """The case's experiment config (tiny with `short`), `FIELD=VALUE`
  overrides applied."""
  config = CONFIGS[case.config].get_config("tiny" if short else None)
  config.data_dir, config.fold, config.plots = case.data_dir, case.fold, False
  for item in overrides:
    field, _, value = item.partition("=")
    config[field] = sweep.parse_value(config, field, value)
  return config


def best_time(fn, repeats: int) -> float:
  """Seconds of the fastest of `repeats` calls of `fn` (after one warm-up);
  `fn` must block until its result is ready."""
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def matmul_flops(shape_a, shape_b, repeats: int) -> float:
  """Measured FLOP/s of a float32 (batched) matmul of these shapes."""
  a = jax.random.normal(jax.random.key(0), shape_a, jnp.float32)
  b = jax.random.normal(jax.random.key(1), shape_b, jnp.float32)
  dot = jax.jit(jnp.matmul)
  seconds = best_time(lambda: dot(a, b).block_until_ready(), repeats)
  return 2 * np.prod(shape_a) * shape_b[-1] / seconds


def stream_bytes_per_s(n: int, repeats: int) -> float:
  """Measured memory bandwidth: bytes read and written per second by a
  float32 `x * 1.5 + 0.5` over n elements in place (the input donated, so
  no page of a new output is touched for the first time)."""
  step = jax.jit(lambda x: x * 1.5 + 0.5, donate_argnums=0)
  x = [step(jnp.ones(n, jnp.float32))]
  def once():
    x[0] = step(x[0])
    x[0].block_until_ready()
  return 2 * 4 * n / best_time(once, repeats)


def cost(compiled) -> dict:
  """XLA's cost analysis of a compiled program as one dict (some versions
  return a list of one dict per computation)."""
  found = compiled.cost_analysis()
  return found[0] if isinstance(found, (list, tuple)) else found


def epoch_cost(run, state) -> dict:
  """{flops, bytes} of one training epoch. XLA's analysis counts a while
  loop's body once, so the scan's share is multiplied by the steps; the
  work outside it is essentially the epoch's plan (`groups.train_plan`),
  analysed on its own and added once."""
  config = run.config
  steps = groups.train_steps(len(run.dataset.train), config.batch_size)
  args = (state, run.train, run.tables, run.member_data, 0)
  whole = cost(run.train_epoch.lower(*args).compile())
  plan = jax.jit(jax.vmap(lambda k: groups.train_plan(
      k, run.tables, groups.context_window(config), steps,
      config.batch_size)))
  keys = jax.random.split(jax.random.key(0), len(run.members))
  outside = cost(plan.lower(keys).compile())
  return {k: steps * (whole[name] - outside[name]) + outside[name]
          for k, name in (("flops", "flops"), ("bytes", "bytes accessed"))}


def host_calls(run, state) -> list[str]:
  """The HLO lines of the compiled epoch that reach the host."""
  text = run.train_epoch.lower(state, run.train, run.tables, run.member_data,
                               0).compile().as_text()
  return [line.strip()[:120] for line in text.splitlines()
          if any(c in line for c in HOST_CALLS)]


def guarded_epoch(run, state, epoch: int) -> tuple[str, dict]:
  """Runs one epoch with transfers between host and devices disallowed,
  its inputs on the devices. Returns "none" when nothing crossed (else the
  error) and the state after the epoch."""
  on_device = jnp.asarray(epoch)  # Weakly typed, as fit's Python int.
  try:
    with (jax.transfer_guard_host_to_device("disallow"),
          jax.transfer_guard_device_to_host("disallow")):
      state, stats = run.train_epoch(state, run.train, run.tables,
                                     run.member_data, on_device)
      jax.block_until_ready(stats)
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", state
  return "none", state


class Timed:
  """Wraps a function, recording (start, seconds) of every call; with
  `block`, the time runs until its outputs are ready."""

  def __init__(self, fn, block: bool = False, phase=None, meter=None):
    self.fn, self.block, self.calls = fn, block, []
    self.phase, self.meter = phase, meter

  def __call__(self, *args, **kwargs):
    start = time.perf_counter()
    with self.meter.during(self.phase) if self.meter else (
        contextlib.nullcontext()):
      out = self.fn(*args, **kwargs)
      if self.block:
        jax.block_until_ready(out)
    self.calls.append((start, time.perf_counter() - start))
    return out


class HostBytes:
  """Counts the bytes `transfer.to_host` brings back, per phase (what fit
  is doing: "valid" inside the validation predict, "ckpt" inside the
  checkpoint save, else "stats")."""

  def __init__(self):
    self.bytes, self.phase = {}, "stats"

  @contextlib.contextmanager
  def during(self, phase):
    before, self.phase = self.phase, phase
    try:
      yield
    finally:
      self.phase = before

  def wrap(self, to_host):
    def counted(tree):
      out = to_host(tree)
      self.bytes[self.phase] = self.bytes.get(self.phase, 0) + sum(
          x.nbytes for x in jax.tree.leaves(out))
      return out
    return counted


@contextlib.contextmanager
def patched(module, name, value):
  """`module.name` replaced by `value` inside the block."""
  original = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, original)


def per_epoch_seconds(calls, starts: np.ndarray) -> np.ndarray:
  """[E] seconds of the `calls` ((start, seconds) of a Timed) made in each
  epoch, the epochs beginning at `starts` [E + 1] (the last: fit's end)."""
  found = np.zeros(len(starts) - 1)
  for start, seconds in calls:
    found[np.searchsorted(starts, start, side="right") - 1] += seconds
  return found


def fit_timed(config, epochs: int, workdir: str, seed_counts=()) -> dict:
  """One `fit.fit` of 1 + `epochs` epochs with its parts timed (see the
  module docstring), then the epoch's cost and host checks, and the seed
  scaling for `seed_counts`; returns the figures of the case."""
  config.num_epochs = 1 + epochs
  # A save after every epoch, to time one (the configs' checkpoint_seconds
  # saves at most every 30 s).
  config.checkpoint_seconds = 0.0
  with timing.CompileSeconds().active() as compiled:
    t = time.perf_counter()
    run = run_lib.Run.setup(config, workdir)
    setup_s = time.perf_counter() - t
    meter = HostBytes()
    epoch = Timed(run.train_epoch, block=True)
    predict = Timed(run.predict, phase="valid", meter=meter)
    save = Timed(checkpoint.save, phase="ckpt", meter=meter)
    with (patched(transfer, "to_host", meter.wrap(transfer.to_host)),
          patched(checkpoint, "save", save),
          contextlib.redirect_stdout(io.StringIO())):
      state = fit_lib.fit(dataclasses.replace(run, train_epoch=epoch,
                                            predict=predict))
      end = time.perf_counter()
  per_epoch = {k: v // config.num_epochs for k, v in meter.bytes.items()}
  starts = np.array([s for s, _ in epoch.calls] + [end])
  period = np.diff(starts)
  train_s = np.array([d for _, d in epoch.calls])
  valid_s, ckpt_s = (per_epoch_seconds(f.calls, starts)
                     for f in (predict, save))
  steady = slice(1, None)
  split = {"train": float(np.median(train_s[steady])),
           "valid": float(np.median(valid_s[steady])),
           "ckpt": float(np.median(ckpt_s[steady]))}
  split["host"] = float(np.median((period - train_s - valid_s - ckpt_s)
                                  [steady]))
  split["epoch"] = float(np.median(period[steady]))

  ds, members = run.dataset, run.members
  masks = evaluation.fixed_masks(ds.test.available, members.combos)
  params = epoch_lib.selected_params(state)
  eval_s = best_time(lambda: run.predict(params, run.inputs["test"], masks,
                                         keys=("pred",)), 2)
  flops = epoch_cost(run, state)
  calls = host_calls(run, state)
  compiles = dict(run_lib.COMPILES)
  guard, state = guarded_epoch(run, state, config.num_epochs)
  assert dict(run_lib.COMPILES) == compiles, "the guarded epoch retraced"
  seeds = seed_scaling(run, state, seed_counts, epochs)
  combos = len(members.combos)
  return {
      "train_utterances": len(ds.train), "seeds": len(config.seeds),
      "members": len(members),
      "combinations": combos,
      "steps": groups.train_steps(len(ds.train), config.batch_size),
      "setup_s": setup_s,
      "compile_s": {"epoch": compiled.seconds["train_epoch"],
                    "eval": compiled.seconds["predict_chunk"],
                    "init": compiled.seconds["init"]},
      "epoch_s": split,
      "train_utt_per_s": len(ds.train) * len(members) / split["train"],
      "eval_utt_per_s": len(ds.test) * combos * len(members) / eval_s,
      "epoch_flops": flops["flops"], "epoch_bytes": flops["bytes"],
      "achieved_flops_per_s": flops["flops"] / split["train"],
      "host_bytes_per_epoch": per_epoch,
      "host_calls_in_epoch": calls, "transfer_guard": guard,
      "compiles": compiles, "seed_scaling": {str(n): t for n, t in
                                             seeds.items()},
      "model_matmul_shape": [len(members), config.batch_size * 4,
                             config.hidden_dim,
                             config.mlp_ratio * config.hidden_dim]}


def epoch_seconds(run, state, member_data, epochs: int) -> float:
  """Median seconds of `epochs` steady compiled epochs of `run` from
  `state` (after one that may compile)."""
  times = []
  for epoch in range(1 + epochs):
    t = time.perf_counter()
    state, stats = run.train_epoch(state, run.train, run.tables, member_data,
                                   epoch)
    jax.block_until_ready(stats)
    times.append(time.perf_counter() - t)
  return float(np.median(times[1:]))


def repeat_members(tree, n: int):
  """`tree` (every leaf with a leading member axis) for n members: the first
  member's entries repeated (the speed does not depend on the values)."""
  return jax.jit(lambda t: jax.tree.map(
      lambda x: jnp.repeat(x[:1], n, axis=0), t))(tree)


def seed_scaling(run, state, counts, epochs: int) -> dict:
  """{seeds: steady epoch seconds} for each count of vmapped seeds (the
  mixed regime: a member per seed), each measured alike: epochs one after
  the other."""
  return {n: epoch_seconds(run, repeat_members(state, n),
                           repeat_members(run.member_data, n), epochs)
          for n in counts}


def device_worker(args) -> None:
  """Subprocess side of `device_scaling`: prints {devices: epoch seconds}."""
  case = Case("worker", *args.device_worker[:2], int(args.device_worker[2]))
  found = {}
  with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
    for n in (1, args.devices):
      config = make_config(case, args.short, args.set)
      config.num_devices = n
      run = run_lib.Run.setup(config, os.path.join(tmp, str(n)))
      found[n] = epoch_seconds(run, run.state, run.member_data, args.epochs)
  print(json.dumps(found))


def device_scaling(case: Case, args) -> dict:
  """{devices: steady epoch seconds} for 1 and `args.devices` fake CPU
  devices, measured in a subprocess (the device count is fixed when JAX
  starts)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") +
      f" --xla_force_host_platform_device_count={args.devices}").strip())
  command = [sys.executable, os.path.abspath(__file__), "--device_worker",
             case.config, case.data_dir, str(case.fold),
             "--devices", str(args.devices), "--epochs", str(args.epochs)]
  command += ["--short"] * args.short + [f"--set={s}" for s in args.set]
  done = subprocess.run(command, env=env, capture_output=True, text=True,
                        check=False)
  if done.returncode:
    raise RuntimeError(f"device subprocess failed:\n{done.stderr[-2000:]}")
  return {int(k): v for k, v in json.loads(
      done.stdout.strip().splitlines()[-1]).items()}


def cases(args, tmp: str) -> list[Case]:
  """The datasets to measure; a synthetic one is written into `tmp`."""
  if args.short:
    out = os.path.join(tmp, "synthetic-mosi")
    writer.write(synthetic.generate("mosi", seed=0, scale=0.05), out)
    return [Case("synthetic MOSI (tiny)", "mosi", out)]
  found = []
  for name, config, path, fold in (
      ("MOSI", "mosi", args.mosi, 0),
      (f"IEMOCAP-4 fold {args.fold}", "iemocap", args.iemocap, args.fold)):
    if os.path.isdir(path):
      found.append(Case(name, config, os.path.abspath(path), fold))
    else:
      print(f"{name}: skipped, no prepared data in {path}")
  if args.mosei_scale:
    out = os.path.join(tmp, "synthetic-mosei")
    writer.write(synthetic.generate("mosei", seed=0, scale=args.mosei_scale),
                 out)
    found.append(Case("synthetic MOSEI", "mosei", out))
  return found


def case_row(r: dict) -> str:
  """A measured case's row of the main table (`table`)."""
  s = r["epoch_s"]
  compiled = " / ".join(f"{r['compile_s'][k]:.1f}"
                        for k in ("epoch", "eval", "init"))
  return (f"| {r['case']} | {r['variant']} | {r['train_utterances']} x "
          f"{r['members']} | {r['setup_s']:.1f} | {compiled} | "
          f"{r['train_utt_per_s']:,.0f} | "
          f"{r['eval_utt_per_s']:,.0f} | {s['epoch']:.2f} = {s['train']:.2f} "
          f"+ {s['valid']:.2f} + {s['ckpt']:.2f} + {s['host']:.2f} | "
          f"{r['epoch_flops'] / 1e9:.1f} | "
          f"{r['achieved_flops_per_s'] / 1e9:.1f} | {r['peak_ratio']:.3f} | "
          f"{r['model_matmul_ratio']:.3f} |")


def table(report: dict) -> str:
  """The readable tables of a report."""
  peak = report["matmul_peak_flops_per_s"]
  bandwidth = report["bandwidth_bytes_per_s"]
  lines = [
      f"device: {report['device']}; matmul peak "
      f"{peak / 1e9:.1f} GFLOP/s (float32 {report['peak_size']}^3, best of "
      f"{report['peak_repeats']}); memory bandwidth "
      f"{bandwidth / 1e9:.1f} GB/s (float32 x * a + b in place over "
      f"{report['stream_mib']} MiB)", "",
      "| case | model | utts x seeds | setup s | compile s: epoch / eval / "
      "init "
      "| train utt/s | eval utt/s | epoch s = train + valid + ckpt + host "
      "| GFLOP/epoch | GFLOP/s | / peak | matmul at model shape / peak |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  lines += [case_row(r) for r in report["cases"]]
  lines += ["", "Per epoch: validation / train = "
            + ", ".join(f"{r['case']} {r['variant']} "
                        f"{r['epoch_s']['valid'] / r['epoch_s']['train']:.2f}"
                        for r in report["cases"])]
  lines += ["Training's FLOP per byte and bytes per second (XLA's count of "
            "the bytes its operations access; / bandwidth): " + ", ".join(
                f"{r['case']} {r['variant']} "
                f"{r['epoch_flops'] / r['epoch_bytes']:.1f}, "
                f"{r['epoch_bytes'] / r['epoch_s']['train'] / 1e9:.1f} GB/s "
                f"({r['epoch_bytes'] / r['epoch_s']['train'] / bandwidth:.2f})"
                for r in report["cases"])]
  lines += ["Bytes to the host per epoch: " + ", ".join(
      f"{r['case']} {r['variant']} " + " ".join(
          f"{k} {v:,}" for k, v in sorted(r["host_bytes_per_epoch"].items()))
      for r in report["cases"])]
  inside = {(r["case"], r["variant"]): (r["host_calls_in_epoch"],
                                        r["transfer_guard"])
            for r in report["cases"]}
  clean = all(not c and g == "none" for c, g in inside.values())
  lines.append("Host round trips inside the compiled epoch: " + (
      "none (no callback/outfeed/send/recv in its HLO; transfer_guard "
      "'disallow' passes)" if clean else json.dumps(
          {" ".join(k): v for k, v in inside.items()})))
  for r in report["cases"]:
    if r["seed_scaling"]:
      # Relative to the fewest seeds measured (1 by default).
      first = min(r["seed_scaling"], key=int)
      one = r["seed_scaling"][first]
      lines.append(f"Seeds, {r['case']} {r['variant']}, train s per epoch "
                   f"(x {first} seed(s)): " + ", ".join(
                       f"{n}: {t:.2f} ({t / one:.2f}x)"
                       for n, t in r["seed_scaling"].items()))
  if report.get("device_scaling"):
    d = report["device_scaling"]
    one, many = d["seconds"]["1"], d["seconds"][str(d["devices"])]
    lines.append(f"Devices, {d['case']} (fake CPU devices): 1: {one:.2f} s, "
                 f"{d['devices']}: {many:.2f} s ({many / one:.2f}x)")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mosi", default=os.path.join("prepared", "mosi"),
                      help="prepared MOSI (skipped when absent)")
  parser.add_argument("--iemocap", default=os.path.join("prepared",
                                                        "iemocap4"),
                      help="prepared IEMOCAP-4 (skipped when absent)")
  parser.add_argument("--fold", type=int, default=1,
                      help="IEMOCAP held-out session")
  parser.add_argument("--mosei_scale", type=float, default=1.0,
                      help="scale of the synthetic MOSEI (0: skip it)")
  parser.add_argument("--epochs", type=int, default=2,
                      help="steady epochs measured after the compiling one")
  parser.add_argument("--seeds", default="1,5,20",
                      help="vmapped seed counts of the scaling")
  parser.add_argument("--devices", type=int, default=8,
                      help="fake CPU devices compared with 1 (0: skip)")
  parser.add_argument("--peak_size", type=int, default=0,
                      help="side of the peak matmul (0: 2048 on CPU, 8192 "
                      "on accelerators)")
  parser.add_argument("--models", default=",".join(VARIANTS),
                      help=f"comma-separated, of {list(VARIANTS)}")
  parser.add_argument("--set", action="append", default=[],
                      metavar="FIELD=VALUE", help="config override for every "
                      "case (repeatable)")
  parser.add_argument("--workdir", help="where to write (default: a temp "
                      "dir)")
  parser.add_argument("--json", help="also write the figures to this file")
  parser.add_argument("--short", action="store_true",
                      help="seconds, for CI: tiny synthetic data and config, "
                      "the default model only, 1 steady epoch, no seed or "
                      "device scaling (each would compile another epoch)")
  parser.add_argument("--device_worker", nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.variants = args.models.split(",")
  unknown = set(args.variants) - set(VARIANTS)
  if unknown:
    parser.error(f"--models: unknown {sorted(unknown)}")
  for item in args.set:
    field, _, value = item.partition("=")
    try:
      sweep.parse_value(mosi_config.get_config(), field, value)
    except ValueError as e:
      parser.error(f"--set {item}: {e.problem}")
  if args.short:
    args.variants, args.epochs, args.seeds, args.devices = (
        ["default"], 1, "", 0)
    args.peak_size = args.peak_size or 512
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.device_worker:
    device_worker(args)
    return {}
  backend = jax.default_backend()
  size = args.peak_size or (2048 if backend == "cpu" else 8192)
  stream = 2**22 if args.short else 2**26 if backend == "cpu" else 2**28
  repeats = 5
  report = {"device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"
                      f" ({backend}; {os.cpu_count()} host CPUs)",
            "peak_size": size, "peak_repeats": repeats,
            "matmul_peak_flops_per_s": matmul_flops((size, size),
                                                    (size, size), repeats),
            "stream_mib": 4 * stream // 2**20,
            "bandwidth_bytes_per_s": stream_bytes_per_s(stream, repeats),
            "environment": timing.environment(), "cases": []}
  peak = report["matmul_peak_flops_per_s"]
  with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
    found = cases(args, tmp)
    counts = [int(n) for n in args.seeds.split(",") if n]
    for case in found:
      for variant in args.variants:
        fields = VARIANTS[variant]
        config = make_config(case, args.short, args.set)
        config.update(fields)
        r = fit_timed(config, args.epochs,
                      os.path.join(tmp, f"{case.config}-{variant}"),
                      counts if variant == args.variants[0] else ())
        shape = r["model_matmul_shape"]
        r["model_matmul_ratio"] = matmul_flops(
            shape[:3], [shape[0], *shape[2:]], repeats) / peak
        r.update(case=case.name, variant=variant,
                 peak_ratio=r["achieved_flops_per_s"] / peak)
        report["cases"].append(r)
        # Each case as it is measured: a run stopped later keeps these.
        print(case_row(r), flush=True)
        if args.json:
          workdir_lib.write_text(args.json, json.dumps(report, indent=1))
    if args.devices and found:
      report["device_scaling"] = {
          "case": found[0].name, "devices": args.devices,
          "seconds": {str(n): t for n, t in device_scaling(found[0],
                                                           args).items()}}
  print(table(report))
  if args.json:
    workdir_lib.write_text(args.json, json.dumps(report, indent=1))
  return report


if __name__ == "__main__":
  main()
