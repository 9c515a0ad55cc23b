"""8 points: learning rate x MCB-CL temperature x MCB-CL weight.

    python -m experiments.sweep --sweep experiments/sweeps/mosi_small.py \\
        --data_dir prepared/mosi --workdir runs/sweep_small --config.seeds=0,1,2
"""

from mcur_jax import sweep


def get_sweep():
  return sweep.product(learning_rate=[1e-3, 3e-4], tau=[0.05, 0.2],
                       mcb_weight=[0.1, 0.3])
