"""Shared check for the parts stored after an embedded model's decoder (vcomp.weights.embedded.STAGES)."""

from __future__ import annotations

import json

import pytest


def assert_stage_needs_weights_and_description(emb, which: str, stage, folder) -> None:
    """`emb` saved to `folder` with `stage` as its autoencoder's `which` loads with it; without the
    stage's tensors, or without its description in embedded.json, loading is a WeightsError naming
    the stage (a corrupt model, not silently one without it)."""
    from safetensors.torch import load_file, save_file

    from vcomp.errors import WeightsError
    from vcomp.weights.embedded import STAGES, load_embedded, save_embedded

    key, what, _ = STAGES[which]
    setattr(emb.autoencoder, which, stage)
    weights, config = save_embedded(folder, emb.unet, emb.text_encoder, autoencoder=emb.autoencoder)
    assert getattr(load_embedded(folder).autoencoder, which) is not None
    tensors = load_file(str(weights))
    save_file({k: v for k, v in tensors.items() if not k.startswith(f"{which}.")}, str(weights))
    with pytest.raises(WeightsError, match=what):
        load_embedded(folder)
    save_file(tensors, str(weights))
    record = json.loads(config.read_text())
    del record["autoencoder"][key]
    config.write_text(json.dumps(record))
    with pytest.raises(WeightsError, match=what):
        load_embedded(folder)
