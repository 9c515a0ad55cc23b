"""The ablation table: MCUR, without MCB-CL, without SUGR, without both, and
the per-condition (MoMKE) regime, all else the config's.

    python -m experiments.sweep --sweep experiments/sweeps/mosi_ablation.py \\
        --data_dir prepared/mosi --workdir runs/mosi_ablation
    python -m experiments.sweep_report runs/mosi_ablation   # -> results.md
"""


def get_sweep():
  return [{}, {"mcb_weight": 0.0}, {"sugr": False},
          {"mcb_weight": 0.0, "sugr": False}, {"regime": "per_condition"}]
