"""The generating commands end to end through the CLI, on a randomly initialised tiny model
(the shipped model's quality is measured by `vcomp eval`, not here): outputs, sidecar,
determinism, inpainting keeps the outside of the mask, content x motion grids."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vcomp.cli import main
from vcomp.errors import InputError
from vcomp.io import read_clip, write_png, write_video
from vcomp.recipes import analysis_size, parse_path, path_motion

SHARED = Path(__file__).resolve().parents[2] / "shared"
MEDIA = SHARED / "media"
FAST = ["--steps", "2", "--frames", "4", "-q"]


@pytest.fixture(autouse=True)
def random_model(monkeypatch):
    monkeypatch.setenv("VCOMP_ALLOW_RANDOM", "1")


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_t2v_writes_video_sheet_and_sidecar(tmp_path, capsys):
    out = cli(capsys, "t2v", "a red circle moving right on a blue background", "-o", tmp_path / "a.mp4",
              "--seed", "3", "--json", *FAST)
    record = json.loads(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.mp4", "a.png"]
    assert json.loads((tmp_path / "a.json").read_text()) == record
    assert record["options"]["seed"] == 3 and record["generation"]["steps"] == 2
    assert record["generation"]["model"] == "tiny" and record["vcomp_version"]
    clip = read_clip(tmp_path / "a.mp4")
    assert clip.frames.shape == (4, 64, 64, 3)


def test_same_seed_same_video_other_seed_differs(tmp_path, capsys):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        cli(capsys, "t2v", "a green star", "-o", tmp_path / name, "--seed", seed, "--no-preview", *FAST)
    a, b, c = (read_clip(tmp_path / n).frames for n in "abc")  # PNG folders: lossless
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_t2v_with_every_spatial_condition_and_a_path(tmp_path, capsys):
    image = np.zeros((80, 120, 3), np.uint8)
    image[:, :60] = (255, 0, 0)
    write_png(tmp_path / "img.png", image)
    out = cli(capsys, "t2v", "a red circle", "-o", tmp_path / "o.gif", "--image", tmp_path / "img.png",
              "--sketch", MEDIA / "src_single_sketch.png", "--style", MEDIA / "fangao_01.jpeg",
              "--path", "0.1,0.5 0.9,0.5", "--json", *FAST)
    record = json.loads(out)
    assert set(record["conditions"]) == {"image", "single_sketch", "style", "motion"}
    assert record["generation"]["guide"] == ["text", "style"]


def test_path_motion_moves_along_the_path():
    motion = path_motion("0.25,0.5 0.75,0.5", 5, (64, 64))
    assert motion.shape == (5, 2, 64, 64) and np.abs(motion[0]).max() == 0
    moving = motion[1:, 0][motion[1:, 0] != 0]
    assert np.allclose(moving, 8.0)  # 32 px over 4 steps, to the right
    assert np.abs(motion[:, 1]).max() == 0
    assert motion[2, 0, 32, 32] == 8.0 and motion[2, 0, 32, 2] == 0  # a disc around the point
    with pytest.raises(InputError, match="at least two points"):
        parse_path("0.5,0.5")


def test_motion_transfer_on_a_real_clip(tmp_path, capsys):
    out = cli(capsys, "motion-transfer", MEDIA / "motion_transfer.mp4", "-p", "a white square", "-o",
              tmp_path / "m.mp4", "--json", "--motion-guidance", "0.2", *FAST)
    record = json.loads(out)
    assert record["conditions"] == ["motion"]
    assert record["options"]["motion_guidance"] == 0.2 and record["generation"]["motion_guidance"] == 0.2
    assert record["extractors"]["motion"]["extractor"] == "h264-side-data"
    assert record["extractors"]["motion"]["still_threshold"] == 2.0
    assert len(record["frame_indices"]) == 4


def test_inpaint_keeps_everything_outside_the_mask(tmp_path, capsys):
    src = read_clip(MEDIA / "blackswan.mp4").frames[:8]
    write_video(tmp_path / "src", src, 8)  # PNG frames: the source is exact
    cli(capsys, "inpaint", tmp_path / "src", "--box", "0.25,0.25,0.5,0.5", "-p", "a red circle", "-o",
        tmp_path / "out", "--fps", "8", *FAST)
    out = read_clip(tmp_path / "out").frames
    # the source at the model size, as the adapter resizes it from the analysis size
    ref = read_clip(tmp_path / "src", size=analysis_size((64, 64))).frames[:4]
    ref = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in ref])
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False
    assert np.abs(out[:, outside].astype(int) - ref[:, outside]).max() <= 1
    assert np.abs(out[:, ~outside].astype(int) - ref[:, ~outside]).mean() > 5  # the inside is new


def test_inpaint_with_a_mask_of_another_size_and_length(tmp_path, capsys):
    mask = np.zeros((3, 30, 50, 3), np.uint8)
    mask[:, 10:20, 20:30] = 255
    write_video(tmp_path / "mask.gif", mask, 4)
    out = cli(capsys, "inpaint", MEDIA / "blackswan.mp4", "--mask", tmp_path / "mask.gif", "-p", "a red circle",
              "-o", tmp_path / "o.mp4", "--json", *FAST)
    assert json.loads(out)["conditions"] == ["motion", "mask"]


@pytest.mark.parametrize("structure, expected", [("depth", ["motion", "depth"]),
                                                 ("depth,sketch", ["motion", "depth", "sketch"])])
def test_translate_structures(tmp_path, capsys, structure, expected):
    out = cli(capsys, "translate", MEDIA / "video_8800.mp4", "-p", "a blue square", "--structure", structure,
              "-o", tmp_path / "t.mp4", "--json", *FAST)
    assert json.loads(out)["conditions"] == expected


def test_stylize_uses_the_style_image(tmp_path, capsys):
    out = cli(capsys, "stylize", MEDIA / "blackswan.mp4", "--style", MEDIA / "moon_on_water.jpg", "-o",
              tmp_path / "s.mp4", "--json", *FAST)
    record = json.loads(out)
    assert "style" in record["conditions"] and record["extractors"]["style"]["source"].endswith("moon_on_water.jpg")


def test_the_sidecar_names_the_per_guide_default_guidance_that_ran(tmp_path, capsys):
    """A model whose embedded.json gives the style its own default: stylize runs (and records) it,
    a command without a style the plain default."""
    from vcomp.weights.embedded import random_embedded, save_embedded

    emb = random_embedded()
    _, config = save_embedded(tmp_path / "model", emb.unet, emb.text_encoder, autoencoder=emb.autoencoder)
    sampling = {"guidance": 3.0, "guidance_by_guide": {"style": 7.0}}
    config.write_text(json.dumps({**json.loads(config.read_text()), "sampling": sampling}))
    weights = ["--weights", tmp_path / "model"]
    styled = json.loads(cli(capsys, "stylize", MEDIA / "blackswan.mp4", "--style", MEDIA / "moon_on_water.jpg",
                            "-o", tmp_path / "s.mp4", "--json", *weights, *FAST))
    assert styled["options"]["guidance"] == styled["generation"]["guidance"] == 7.0
    plain = json.loads(cli(capsys, "t2v", "a red circle", "-o", tmp_path / "t.mp4", "--json", *weights, *FAST))
    assert plain["options"]["guidance"] == plain["generation"]["guidance"] == 3.0


def test_conditions_folder_from_extract(tmp_path, capsys):
    cli(capsys, "extract", MEDIA / "blackswan.mp4", "-o", tmp_path / "conds", "-c", "motion,depth", "-n", "4",
        "--size", "64x64", "--no-previews", "-q")
    out = cli(capsys, "translate", MEDIA / "blackswan.mp4", "-p", "a red circle", "--conditions",
              tmp_path / "conds", "-o", tmp_path / "t.mp4", "--json", *FAST)
    assert json.loads(out)["conditions"] == ["motion", "depth"]


def test_grid_tiles_prompts_by_motions(tmp_path, capsys):
    out = cli(capsys, "t2v", "a red circle", "a blue square", "--path", "0.1,0.5 0.9,0.5", "--path",
              "0.5,0.1 0.5,0.9", "--grid", "-o", tmp_path / "g.mp4", "--json", *FAST)
    record = json.loads(out)
    assert record["grid"]["rows"] == ["a red circle", "a blue square"] and len(record["grid"]["columns"]) == 2
    assert read_clip(tmp_path / "g.mp4").frames.shape == (4, 128, 128, 3)
    assert len(record["generation"]["grid"]) == 4
    assert {c["generation"]["seed"] for c in record["generation"]["grid"]} == {0}


def test_several_prompts_without_grid_are_numbered(tmp_path, capsys):
    out = cli(capsys, "t2v", "a red circle", "a blue square", "-o", tmp_path / "v.mp4", *FAST[:-1])
    assert out.split() == [str(tmp_path / "v-1.mp4"), str(tmp_path / "v-2.mp4")]
