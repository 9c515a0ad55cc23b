"""The ablation table: MCUR, without MCB-CL, without SUGR, without both,
without context (the per-utterance model), and the per-condition (MoMKE)
regime, all else the config's. For any dataset:

    python -m experiments.sweep --sweep experiments/sweeps/ablation.py \\
        --config experiments/configs/iemocap.py --data_dir prepared/iemocap4 \\
        --workdir runs/iemocap4_ablation
    python -m experiments.sweep_report runs/iemocap4_ablation   # -> results.md
"""


def get_sweep():
  return [{}, {"mcb_weight": 0.0}, {"sugr": False},
          {"mcb_weight": 0.0, "sugr": False}, {"context_layers": 0},
          {"regime": "per_condition"}]
