"""Receptive-field constraints at inference: limit how far back each kind of layer may see.

    >>> import torch, retrieval_heads as rh
    >>> model = rh.HybridLM(rh.ModelConfig(layout="SDF", d_model=32, n_heads=2, window=8))
    >>> x = torch.randint(0, 256, (1, 40))
    >>> with rh.interventions.receptive_field(model, full=16):       # F layers see 16 keys
    ...     y = model(x)
    >>> with rh.interventions.receptive_field(model, efficient=4):   # S window 4, D state reset
    ...     y = model(x)

- ``full=w'``: every full-attention (``F``) layer becomes a sliding window of ``w'`` keys
  (including the query itself).
- ``efficient=w''``: sliding-window (``S``) layers see ``min(window, w'')`` keys, and every
  recurrent layer (``M``, ``D``, ``L``) sees only the last ``w''`` tokens (its recurrence is
  restarted at ``t - w'' + 1`` for every position ``t``; exact, O(T·w'')).
- ``layers={l: w}``: a window for individual layers (any kind; an ``S`` layer is never
  widened beyond its trained window).

A window ``>= T`` changes nothing. Windows apply to ``generate`` too (recurrent layers keep
the last ``w'' - 1`` inputs in the decode cache). The previous windows are restored on exit.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..config import RECURRENT_KINDS


def _check_window(name, w):
    if w is None:
        return
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise ValueError(f"{name}: a receptive field is a positive number of tokens, got {w!r}")


def layer_windows(model, *, full: int | None = None, efficient: int | None = None,
                  layers: dict | None = None) -> dict[int, int | None]:
    """The window each layer would get (None = unlimited), without changing the model."""
    cfg = model.cfg
    _check_window("full", full)
    _check_window("efficient", efficient)
    out = {}
    for l, block in enumerate(model.blocks):
        mixer = block.token_mixer
        kind = cfg.layer_kind(l)
        w = mixer.window
        if kind == "F" and full is not None:
            w = full
        elif kind == "S" and efficient is not None:
            w = min(w, efficient) if w is not None else efficient
        elif kind in RECURRENT_KINDS and efficient is not None:
            w = efficient
        out[l] = w
    for l, w in (layers or {}).items():
        l = int(l)
        if not 0 <= l < cfg.n_layers:
            raise ValueError(f"layers: layer {l} out of range; the model has {cfg.n_layers} layers")
        _check_window(f"layers[{l}]", w)
        trained = cfg.layer_window(l)
        out[l] = min(w, trained) if (trained is not None and w is not None) else w
    return out


@contextmanager
def receptive_field(model, *, full: int | None = None, efficient: int | None = None,
                    layers: dict | None = None):
    """Restrict the receptive field of full-attention layers (``full``), of the efficient
    layers (``efficient``: SWA window and recurrent state reset), or of given ``layers``.
    Yields ``{layer: window}``; restores the previous windows on exit."""
    new = layer_windows(model, full=full, efficient=efficient, layers=layers)
    old = {l: block.token_mixer.window for l, block in enumerate(model.blocks)}
    try:
        for l, w in new.items():
            model.blocks[l].token_mixer.window = w
        yield new
    finally:
        for l, w in old.items():
            model.blocks[l].token_mixer.window = w
