"""The MCUR network as Flax NNX modules, used functionally.

    features (a, t, v) [with their window mean, `context_means`]
      --encoder per modality--> tokens
    absent modality    --> learned missing embedding instead of its encoding
    + learned modality-type embedding
    [CLS, a, t, v] --pre-LN Transformer, availability mask--> u = CLS output
    u + speaker embedding --context over the utterances of each window:
          Transformer (relative-position bias) or bidirectional GRU
          (`context_kind`)--> h   (h = u without context)
    h --> task head (K logits or 1 score), projection head z (L2-normalised,
          for MCB-CL), uncertainty head s (log-variance, for SUGR)

A batch is a flat list of utterances; each carries its window id
("segment", `groups.PAD` for padding), its rank in its group and its
speaker's rank (`groups.py`). The context module reads, for an utterance,
the utterances of its own window only, so one batch holds many windows.
`context_layers` 0 is the per-utterance model: no context module, h = u,
and the window fields are not read.

A modality the dataset does not have at all (dims[m] == 0) gets no encoder:
its token is always the missing embedding.

Window means (`context_means`, e.g. ("text",)): the encoder of a listed
modality reads the utterance's features concatenated with their mean over
the utterances of its window that may use the modality (the drawn mask:
a hidden modality's features are never read; 0 where nobody in the window
has it). This is the "+ context" input of the linear floors (peers.md
section 9): the context Transformer attends over u, a per-utterance
compression, and on real data it does not recover what the plain mean of
the text features carries (new actors of IEMOCAP-4, held-out text 0.712
without the mean, 0.750 with it; docs/results.md). A mean added after the
fusion instead recovered less (0.733). Since the mean is over a window,
the per-utterance part then runs once per window slot in evaluation
(overlapping windows hold an utterance twice) instead of once per
utterance. Without context (`context_layers` 0) there is no window, and
the option does nothing.

No module stores RNG state: dropout keys arrive with each call (`key=None`
means deterministic), so `apply` is a pure function that works under
`jax.grad`, `jax.jit` and `jax.vmap`.

Attention and the missing embeddings (`missing_tokens`). DESIGN masks absent
modalities out of attention, yet asks that a sample with no modality at all
is still predicted "from the missing embeddings alone"; if nothing could see
the missing embeddings, they would get no gradient and that prediction would
come from CLS alone. The default, "cls_only", keeps both: only CLS attends
to a missing token, so CLS knows which modalities are absent, while the
modality tokens never attend to it directly (from the second layer on they
see it only through CLS).
"masked" hides missing tokens from every query (the missing embeddings then
have no effect on h) and "visible" lets every token attend to them.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mcur_jax import attention
from mcur_jax import context
from mcur_jax import groups
from mcur_jax import schema

MISSING_TOKENS = ("cls_only", "masked", "visible")
# config.compute_dtype: the dtype of the encoders' and Transformers'
# matmuls. Parameters, optimizer state, LayerNorms, the residual stream, the
# attention softmax, the heads and the losses stay float32 (mixed precision
# for TPU and GPU, whose matrix units run bfloat16 at several times the
# float32 rate; on CPU bfloat16 gains nothing).
COMPUTE_DTYPES = ("float32", "bfloat16")


class Encoder(nnx.Module):
  """LayerNorm -> Dense(d_in, D) -> GELU -> Dropout -> Dense(D, D)."""

  def __init__(self, d_in: int, hidden: int, dropout: float, *, rngs,
               dtype=None):
    self.norm = nnx.LayerNorm(d_in, rngs=rngs)
    self.fc1 = nnx.Linear(d_in, hidden, dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(dropout)
    self.fc2 = nnx.Linear(hidden, hidden, dtype=dtype, rngs=rngs)

  def __call__(self, x, rngs):
    h = nnx.gelu(self.fc1(self.norm(x)))
    return self.fc2(self.drop(h, deterministic=rngs is None, rngs=rngs))


def mean_modalities(context_layers: int, context_means: tuple[str, ...],
                    dims: dict[str, int]) -> tuple[str, ...]:
  """The modalities whose encoder reads its window mean (`context_means`):
  those listed that the data has, and none without context (no window).
  With any, evaluation runs the per-utterance part once per window slot."""
  return tuple(m for m in context_means if dims[m]) if context_layers else ()


def window_means(x: jax.Array, keep: jax.Array, segment: jax.Array
                 ) -> jax.Array:
  """[S, d]: per row, the mean of `x` over the kept rows of its window (0
  where the window keeps none).

  Args:
    x: [S, d] features.
    keep: [S] bool, the rows that count (padding never does).
    segment: [S] window ids (any order; PAD at padding).
  """
  n = segment.shape[0]
  keep = keep & (segment >= 0)
  # Window ids to 0..n-1 (a sort: the batch's ids are arbitrary integers).
  _, window = jnp.unique(segment, size=n, return_inverse=True,
                         fill_value=groups.PAD)
  window = window.reshape(n)
  sums = jax.ops.segment_sum(jnp.where(keep[:, None], x, 0), window,
                             num_segments=n)
  counts = jax.ops.segment_sum(keep.astype(x.dtype), window, num_segments=n)
  return sums[window] / jnp.maximum(counts[window], 1)[:, None]


class MCUR(nnx.Module):
  """Encoders, fusion Transformer over [CLS, a, t, v], optional context
  module over windows (Transformer or GRU), and three heads."""

  def __init__(self, dims: dict[str, int], num_outputs: int, *,
               hidden: int = 256, num_layers: int = 2, num_heads: int = 4,
               mlp_ratio: int = 2, dropout: float = 0.1, proj_dim: int = 128,
               missing_tokens: str = "cls_only", context_layers: int = 0,
               context_heads: int = 4, context_max_distance: int = 8,
               context_speakers: int = 2, context_window: int = 0,
               context_position_init: str = "zero",
               context_kind: str = "transformer",
               context_means: tuple[str, ...] = (),
               compute_dtype: str = "float32", rngs: nnx.Rngs):
    if missing_tokens not in MISSING_TOKENS:
      raise ValueError(f"missing_tokens={missing_tokens!r}, not one of "
                       f"{MISSING_TOKENS}")
    if compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"compute_dtype={compute_dtype!r}, not one of "
                       f"{COMPUTE_DTYPES}")
    self.missing_tokens = missing_tokens
    # Static: the feature width of each modality (0: none), for `check`.
    self.dims = tuple(dims[m] for m in schema.MODALITIES)
    dtype = jnp.dtype(compute_dtype)
    self.means = mean_modalities(context_layers, context_means, dims)
    self.encoders = nnx.Dict({
        m: Encoder(dims[m] * (2 if m in self.means else 1), hidden, dropout,
                   rngs=rngs, dtype=dtype)
        for m in schema.MODALITIES if dims[m]})
    init = nnx.initializers.normal(0.02)
    n = len(schema.MODALITIES)
    self.type_embedding = nnx.Param(init(rngs.params(), (n, hidden)))
    self.missing_embedding = nnx.Param(init(rngs.params(), (n, hidden)))
    self.cls = nnx.Param(init(rngs.params(), (hidden,)))
    self.blocks = nnx.List([
        attention.Block(hidden, num_heads, mlp_ratio, dropout, rngs=rngs,
                        dtype=dtype)
        for _ in range(num_layers)])
    self.norm = nnx.LayerNorm(hidden, rngs=rngs)
    self.context = context.Context(
        hidden, context_layers, context_heads, mlp_ratio, dropout,
        context_max_distance, context_speakers, context_window,
        context_position_init, context_kind, rngs=rngs,
        dtype=dtype) if context_layers else None
    # The heads stay in float32: they are small, and their outputs feed the
    # losses and metrics directly.
    self.task_head = nnx.Linear(hidden, num_outputs, rngs=rngs)
    self.proj1 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.proj2 = nnx.Linear(hidden, proj_dim, rngs=rngs)
    self.uncertainty_head = nnx.Linear(hidden, 1, rngs=rngs)

  def attention_mask(self, mask: jax.Array) -> jax.Array:
    """[B, 3] modality mask -> [B, 4, 4] (query, key) mask over [CLS, a, t, v]."""
    b = mask.shape[0]
    keys = jnp.concatenate([jnp.ones((b, 1), bool), mask], 1)  # [B, 4]
    allowed = jnp.broadcast_to(keys[:, None, :], (b, 4, 4))
    if self.missing_tokens == "visible":
      allowed = jnp.ones_like(allowed)
    elif self.missing_tokens == "cls_only":
      allowed = allowed.at[:, 0, :].set(True)
    return allowed | jnp.eye(4, dtype=bool)  # Every token sees itself.

  def check(self, inputs, mask, windows) -> None:
    """ValueError naming an input whose shape or dtype the model cannot
    take (no values read, so it costs nothing under jit), instead of an
    error deep in XLA's broadcasting."""
    if np.ndim(self.missing_embedding[...]) != 2:
      raise ValueError(
          f"params: missing_embedding of shape "
          f"{np.shape(self.missing_embedding[...])}, expected [3, hidden]: "
          "parameters with a leading member axis (as restore_for_inference "
          "gives them) need one member: jax.tree.map(lambda x: x[i], params)")
    if np.ndim(mask) != 2 or np.shape(mask)[1] != len(schema.MODALITIES):
      raise ValueError(f"mask: shape {np.shape(mask)}, expected [B, 3] "
                       "(audio, text, video)")
    if jnp.result_type(mask) != jnp.bool_:
      raise ValueError(f"mask: dtype {jnp.result_type(mask)}, expected bool")
    b = mask.shape[0]
    for m, d in zip(schema.MODALITIES, self.dims):
      if d and m not in inputs:
        raise ValueError(f"inputs[{m!r}]: missing; the model reads [B, {d}] "
                         f"{m} features (where masked too: zeros do)")
      if d and tuple(np.shape(inputs[m])) != (b, d):
        raise ValueError(f"inputs[{m!r}]: shape {np.shape(inputs[m])}, "
                         f"expected [{b}, {d}] (B from the mask)")
    if self.context is None:
      return
    name, where = ("inputs", inputs) if windows is None else ("windows",
                                                              windows)
    fields = ("segment", "rank", "speaker") + (
        () if windows is None else ("index",))
    missing = [k for k in fields if k not in where]
    if missing:
      raise ValueError(
          f"{name}: no {', '.join(missing)}; a model with context needs each "
          "utterance's (or window slot's) [B] int segment, rank and speaker")
    want, of = ((b,), "B from the mask") if windows is None else (
        np.shape(windows["segment"])[:1], "S from windows['segment']")
    for k in fields:
      dtype = jnp.result_type(where[k])
      if np.shape(where[k]) != want or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name}[{k!r}]: shape {np.shape(where[k])}, dtype "
                         f"{dtype}; expected [{want[0] if want else 'S'}] int"
                         f" ({of})")

  def __call__(self, inputs: dict[str, jax.Array], mask: jax.Array,
               key: jax.Array | None = None,
               windows: dict[str, jax.Array] | None = None
               ) -> dict[str, jax.Array]:
    """Forward pass over a flat batch of B utterances.

    Args:
      inputs: modality -> [B, d_m] features, for every modality the model
        has an encoder for (dims > 0); the values of a masked one are not
        read (zeros do; NaN is harmless); with context and no `windows`,
        also "segment", "rank", "speaker" [B] int (see the module
        docstring). jax or NumPy arrays.
      mask: [B, 3] bool, the modalities the model may use (a modality the
        model has no encoder for, dims 0, is never used, whatever its bit).
      key: dropout PRNG key; None for deterministic evaluation.
      windows: optional [S] window slots over the B utterances: "index"
        (which utterance each slot holds), "segment", "rank", "speaker".
        The per-utterance part runs once per utterance (once per slot with
        `context_means`), the context and the heads once per slot
        (evaluation's overlapping windows).

    Returns:
      per utterance (per slot with `windows`): pred [., K], z [., proj_dim]
      (unit norm), s [.] (log-variance), h [., hidden] (the representation
      the heads read).
    """
    self.check(inputs, mask, windows)
    # NumPy inputs as jax arrays: indexing one with a traced index fails.
    read = [*self.encoders, "segment", "rank", "speaker"]
    inputs = {k: jnp.asarray(v) for k, v in inputs.items() if k in read}
    if windows is not None:
      windows = {k: jnp.asarray(v) for k, v in windows.items()}
    rngs = None if key is None else nnx.Rngs(dropout=key)
    mask = mask & jnp.array([m in self.encoders for m in schema.MODALITIES])
    # Window means differ between the windows that hold an utterance, so
    # with them the slots are gathered first.
    per_slot = windows is not None and bool(self.means)
    if per_slot:
      inputs = {m: inputs[m][windows["index"]] for m in self.encoders}
      mask = mask[windows["index"]]
    where = inputs if windows is None else windows
    b = mask.shape[0]
    tokens = []
    for j, m in enumerate(schema.MODALITIES):
      token = jnp.broadcast_to(self.missing_embedding[j],
                               (b, self.cls.shape[0]))
      if m in self.encoders:
        # Masked rows' features are not read, and zeros keep a NaN or inf
        # there out of the gradient (0 * NaN is NaN).
        x = jnp.where(mask[:, j:j + 1], inputs[m], 0)
        if m in self.means:
          x = jnp.concatenate(
              [x, window_means(x, mask[:, j], where["segment"])], -1)
        token = jnp.where(mask[:, j:j + 1], self.encoders[m](x, rngs), token)
      tokens.append(token + self.type_embedding[j])
    x = jnp.stack([jnp.broadcast_to(self.cls[...], (b, self.cls.shape[0])),
                   *tokens], 1)
    allowed = self.attention_mask(mask)
    for block in self.blocks:
      x = block(x, allowed, rngs)
    h = self.norm(x[:, 0])
    if windows is not None and not per_slot:
      h = h[windows["index"]]
    if self.context is not None:
      h = self.context(h, where["segment"], where["rank"], where["speaker"],
                       rngs)
    z = self.proj2(nnx.gelu(self.proj1(h)))
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return {"pred": self.task_head(h), "z": z,
            "s": self.uncertainty_head(h)[:, 0], "h": h}


def matmul_precision(compute_dtype: str) -> str | None:
  """The `jax.default_matmul_precision` of the compiled epoch and
  evaluation. A float32 run asks for true float32: JAX's default lets an
  accelerator compute float32 matmuls at reduced precision (TF32 on recent
  NVIDIA GPUs, bfloat16 passes on TPU; a 512 x 512 float32 product on an
  H200 was off float64 by up to 0.033, against 0.00012 on a CPU), so a
  float32 result would depend on where it ran. A bfloat16 run, the fast
  setting, keeps JAX's default (None)."""
  return "float32" if compute_dtype == "float32" else None


def create(config, dims: dict[str, int], num_outputs: int):
  """The model of a config, functionally: (graphdef, init).

  `init(key) -> params` is pure, so it runs under `jax.jit` and `jax.vmap`
  (one parameter set per seed); `graphdef` is shared by all of them.
  """
  def build(key):
    return MCUR(dims, num_outputs, hidden=config.hidden_dim,
                num_layers=config.num_layers, num_heads=config.num_heads,
                mlp_ratio=config.mlp_ratio, dropout=config.dropout,
                proj_dim=config.proj_dim, missing_tokens=config.missing_tokens,
                context_layers=config.context_layers,
                context_heads=config.context_heads,
                context_max_distance=config.context_max_distance,
                context_speakers=config.context_speakers,
                context_window=config.context_window,
                context_position_init=config.context_position_init,
                context_kind=config.context_kind,
                context_means=schema.modality_names(config.context_means),
                compute_dtype=config.compute_dtype,
                rngs=nnx.Rngs(params=key))
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: build(jax.random.key(0))))
  return graphdef, lambda key: nnx.split(build(key))[1]


def apply(graphdef, params, inputs, mask, key=None,
          windows=None) -> dict[str, jax.Array]:
  """The pure forward function of `(graphdef, params)`."""
  return nnx.merge(graphdef, params)(inputs, mask, key, windows)
