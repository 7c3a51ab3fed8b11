"""`vcomp batch`: parsing and validating job files, sharding, resuming, the report, one pipeline
for every job, and failures that stay inside their job (bad lines, bad inputs, bugs, Ctrl-C)."""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path

import numpy as np
import pytest

from vcomp import api
from vcomp import batch as b
from vcomp.cli import main
from vcomp.errors import InputError
from vcomp.io import encode_h264

FAST = {"steps": 1, "frames": 2, "size": "32x32", "preview": False}


@pytest.fixture(autouse=True)
def random_model(monkeypatch):
    monkeypatch.setenv("VCOMP_ALLOW_RANDOM", "1")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def loads(monkeypatch) -> list:
    """Every call of vcomp.api.load_pipeline (what `vcomp batch` loads the model with)."""
    calls = []
    real = api.load_pipeline

    def counted(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "load_pipeline", counted)
    return calls


def write_jobs(path: Path, *jobs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((j if isinstance(j, str) else json.dumps(j)) + "\n" for j in jobs))
    return path


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def small_clip(path: Path) -> Path:
    rng = np.random.default_rng(0)
    clip = np.repeat(np.repeat(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), 4, 1), 4, 2)
    for t in range(8):
        clip[t, 8 + 3 * t:32 + 3 * t, 8:32] = 255
    return encode_h264(clip, path, 8, bf=0, refs=1, crf=18)


# -- parsing -------------------------------------------------------------------------------------
def test_parse_jobs_validates_every_line(tmp_path):
    lines = [
        '{"command": "t2v", "prompt": "a red circle", "output": "out/a.mp4", "negative-prompt": "blue", "size": [32, 48]}',
        "",
        "# a comment",
        "{not json",
        '["t2v"]',
        '{"prompt": "x", "output": "b.mp4"}',
        '{"command": "warp", "output": "c.mp4"}',
        '{"command": "t2v", "prompt": "x", "output": "d.mp4", "colour": "red"}',
        '{"command": "t2v", "prompt": "x", "output": "e.mp4", "device": "cuda"}',
        '{"command": "motion-transfer", "prompt": "x", "output": "f.mp4"}',
        '{"command": "t2v", "prompt": "x", "output": "g.mp4", "steps": "many"}',
        '{"command": "t2v", "prompt": "x", "output": "out/a.mp4"}',
        '{"command": "motion_transfer", "src": ["a.mp4", "/abs/b.mp4"], "prompt": "x", "output": "h.mp4"}',
        '{"command": "extract", "src": "~/clip.mp4", "output": "conds", "conditions": "motion,depth"}',
        '{"command": "t2v", "prompt": ["a", "b"], "conditions": "conds", "output": "i.mp4"}',
        '{"command": "t2v", "prompt": "x", "output": ""}',
    ]
    jobs = b.parse_jobs(lines, tmp_path)
    by_line = {j.line: j for j in jobs}
    assert [j.number for j in jobs] == list(range(1, 15))  # blank and comment lines are not jobs
    good = by_line[1]
    assert good.error is None and good.command == "t2v"
    assert good.kwargs == {"prompt": "a red circle", "output": str(tmp_path / "out/a.mp4"),
                           "negative_prompt": "blue", "size": "32x48"}
    assert "invalid JSON" in by_line[4].error
    assert "JSON object" in by_line[5].error
    assert 'no "command"' in by_line[6].error
    assert "unknown command 'warp'" in by_line[7].error and "motion-transfer" in by_line[7].error
    assert "unknown key 'colour'" in by_line[8].error and "allowed: prompt, output" in by_line[8].error
    assert "--device" in by_line[9].error  # set for the whole batch
    assert "needs 'src'" in by_line[10].error
    assert "'steps' must be an integer" in by_line[11].error
    assert "also written by line 1" in by_line[12].error
    mt = by_line[13]
    assert mt.error is None and mt.command == "motion-transfer"
    assert mt.kwargs["src"] == [str(tmp_path / "a.mp4"), "/abs/b.mp4"]
    assert [p.name for p in mt.outputs()] == ["h-1.mp4", "h-2.mp4"]  # two sources: numbered outputs
    ex = by_line[14]
    assert ex.kwargs["src"] == str(Path("~/clip.mp4").expanduser())
    assert ex.kwargs["conditions"] == "motion,depth"  # extract's --conditions are names, not a path
    assert [p.name for p in by_line[15].outputs()] == ["i-1.mp4", "i-2.mp4"]
    assert by_line[15].kwargs["conditions"] == str(tmp_path / "conds")
    assert "'output' is empty" in by_line[16].error


def test_job_keys_come_from_the_command_signatures():
    keys = b.job_keys("inpaint")
    assert {"src", "prompt", "mask", "box", "no_motion", "output", "seed", "steps", "negative_prompt"} <= set(keys)
    assert not {"pipeline", "progress", "weights", "device"} & set(keys)
    assert keys["src"] is inspect.Parameter.empty and keys["steps"] == 50
    assert {"src", "output", "conditions", "stride", "start", "previews"} <= set(b.job_keys("extract"))


def test_shards_partition_the_jobs():
    jobs = b.parse_jobs([json.dumps({"command": "t2v", "prompt": "x", "output": f"{i}.mp4"}) for i in range(7)])
    shards = [b.select_shard(jobs, i, 3) for i in (1, 2, 3)]
    assert [[j.number for j in s] for s in shards] == [[1, 4, 7], [2, 5], [3, 6]]
    assert b.select_shard(jobs, 1, 1) == jobs
    assert b.parse_shard("2/3") == (2, 3) and b.parse_shard(None) is None
    for bad in ("0/2", "3/2", "1/0", "2", "a/b", "1/2/3"):
        with pytest.raises(InputError, match="--shard"):
            b.parse_shard(bad)


def test_unreadable_or_empty_job_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        b.read_jobs(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="has no jobs"):
        b.read_jobs(write_jobs(tmp_path / "blank.jsonl", "", "# only a comment"))
    with pytest.raises(InputError, match="not UTF-8"):
        (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00binary")
        b.read_jobs(tmp_path / "bin.jsonl")


# -- end to end --------------------------------------------------------------------------------
def test_good_jobs_run_bad_jobs_fail_alone(tmp_path, capsys, loads):
    folder = tmp_path / "jobs"
    folder.mkdir()
    small_clip(folder / "src.mp4")
    jobs = write_jobs(
        folder / "jobs.jsonl",
        {"command": "t2v", "prompt": "a red circle", "output": "out/a.mp4", "seed": 1, **FAST},
        "{this is not json",
        {"command": "motion-transfer", "src": "src.mp4", "prompt": "a blue square", "output": "out/b.mp4", **FAST},
        {"command": "warp", "src": "src.mp4", "output": "out/c.mp4"},
        {"command": "t2v", "prompt": "a green star", "output": "out/d.mp4", "colour": "green"},
        {"command": "motion-transfer", "src": "missing.mp4", "prompt": "a red circle", "output": "out/e.mp4", **FAST},
        {"command": "inpaint", "src": "src.mp4", "prompt": "  ", "box": "0.2,0.2,0.5,0.5", "output": "out/f.mp4", **FAST},
        {"command": "extract", "src": "src.mp4", "output": "conds", "conditions": "motion", "frames": 4},
    )
    code, out, err = run_cli(capsys, "batch", jobs, "--json")
    assert code == 4, err
    assert len(loads) == 1  # one pipeline for every generating job

    # outputs of the good jobs (relative to the job file's folder), nothing of the bad ones
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["a.json", "a.mp4", "b.json", "b.mp4"]
    assert (folder / "conds" / "meta.json").is_file()
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]

    lines = err.strip().splitlines()
    for line_no, reason in ((2, "invalid JSON"), (4, "unknown command 'warp'"), (5, "unknown key 'colour'"),
                            (6, "missing.mp4"), (7, "prompt is empty")):
        assert any(line.startswith(f"FAIL {line_no}/8 line {line_no}: ") and reason in line for line in lines), err
    assert any(line.startswith("ok   1/8 ") and "a.mp4" in line for line in lines), err
    assert "batch: 3 ok, 5 failed (8 jobs)" in err
    assert lines[-1].startswith("error: 5 of 8 jobs failed (lines 2, 4, 5, 6, 7)")
    assert "Traceback" not in err

    report = json.loads(out)
    assert report["summary"] == {"jobs": 8, "ok": 3, "failed": 5, "skipped": 0, "not_run": 0}
    statuses = {j["line"]: j["status"] for j in report["jobs"]}
    assert statuses == {1: "ok", 2: "failed", 3: "ok", 4: "failed", 5: "failed", 6: "failed", 7: "failed", 8: "ok"}
    first = report["jobs"][0]
    assert first["output"] == str(folder / "out" / "a.mp4") and first["error"] is None
    assert set(first["written"]) == {str(folder / "out" / "a.mp4"), str(folder / "out" / "a.json")}
    assert report["jobs"][5]["exit_code"] == 2 and "missing.mp4" in report["jobs"][5]["error"]
    assert report["pipeline"]["preset"] == "tiny" and report["timings"]["total"] > 0
    sidecar = json.loads((folder / "out" / "a.json").read_text())
    assert sidecar["options"]["seed"] == 1 and sidecar["generation"]["size"] == [32, 32]


def test_shards_split_the_work_and_skip_existing_resumes(tmp_path, capsys, loads):
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      *({"command": "t2v", "prompt": "a red circle", "output": f"out/{i}.mp4", "seed": i, **FAST}
                        for i in range(1, 4)))
    out = tmp_path / "out"
    assert run_cli(capsys, "batch", jobs, "--shard", "1/2")[0] == 0
    assert sorted(p.name for p in out.glob("*.mp4")) == ["1.mp4", "3.mp4"]
    assert run_cli(capsys, "batch", jobs, "--shard", "2/2")[0] == 0
    assert sorted(p.name for p in out.glob("*.mp4")) == ["1.mp4", "2.mp4", "3.mp4"]
    assert len(loads) == 2

    # a rerun skips what is done, without even loading the model
    code, stdout, err = run_cli(capsys, "batch", jobs, "--skip-existing", "--json")
    assert code == 0, err
    assert json.loads(stdout)["summary"] == {"jobs": 3, "ok": 0, "failed": 0, "skipped": 3, "not_run": 0}
    assert len(loads) == 2 and "skip 1/3" in err

    # a job whose sidecar is missing (it did not finish) runs again
    (out / "2.json").unlink()
    stamp = (out / "1.mp4").stat().st_mtime_ns
    code, stdout, err = run_cli(capsys, "batch", jobs, "--skip-existing", "--json")
    assert code == 0, err
    assert [j["status"] for j in json.loads(stdout)["jobs"]] == ["skipped", "ok", "skipped"]
    assert (out / "2.json").is_file() and (out / "1.mp4").stat().st_mtime_ns == stamp


def test_jobs_from_stdin_resolve_against_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = {"command": "t2v", "prompt": ["a red circle", "a blue square"], "output": "s.mp4", **FAST}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(job) + "\n"))
    code, out, err = run_cli(capsys, "batch", "-", "--quiet")
    assert code == 0, err
    assert out == "" and err == ""  # --quiet: only failures are shown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-1.json", "s-1.mp4", "s-2.json", "s-2.mp4"]


def test_fail_fast_stops_at_the_first_failure(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      {"command": "t2v", "prompt": "", "output": "a.mp4", **FAST},
                      {"command": "t2v", "prompt": "a red circle", "output": "b.mp4", **FAST})
    code, out, err = run_cli(capsys, "batch", jobs, "--fail-fast", "--json")
    assert code == 4
    assert [j["status"] for j in json.loads(out)["jobs"]] == ["failed", "not run"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl"]


def test_model_that_cannot_load_is_exit_3(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VCOMP_ALLOW_RANDOM")
    weights = tmp_path / "weights"
    weights.mkdir()
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"command": "t2v", "prompt": "a red circle", "output": "a.mp4"})
    code, out, err = run_cli(capsys, "batch", jobs, "--weights", weights)
    assert code == 3 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


# -- failures inside a job, with stand-in commands (no model) ---------------------------------
@pytest.fixture
def fake_t2v(monkeypatch):
    """t2v replaced by a stand-in that writes OUT + OUT.json per prompt; prompt "bug" raises a
    RuntimeError and "stop" a KeyboardInterrupt, both after the first output is complete."""
    from vcomp import commands
    from vcomp.generate import numbered, sidecar_paths

    def t2v(pipeline, prompt, output, **kwargs):
        prompts = prompt if isinstance(prompt, list) else [prompt]
        records = []
        for i, p in enumerate(prompts):
            if p == "bug":
                raise RuntimeError("stand-in bug")
            if p == "stop":
                raise KeyboardInterrupt
            target = numbered(output, i, len(prompts))
            target.write_bytes(b"video")
            sidecar_paths(target)[1].write_text("{}")
            records.append({"outputs": {"video": str(target), "sheet": None,
                                        "sidecar": str(sidecar_paths(target)[1])}, "generation": {"notes": []}})
        return records[0] if len(records) == 1 else {"outputs": records}

    monkeypatch.setitem(commands.COMMANDS, "t2v", t2v)
    monkeypatch.setattr(api, "load_pipeline", lambda *a, **k: object())


def test_a_bug_fails_its_job_only_and_removes_its_outputs(tmp_path, capsys, fake_t2v):
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      {"command": "t2v", "prompt": ["fine", "bug"], "output": "a.mp4"},
                      {"command": "t2v", "prompt": "fine", "output": "b.mp4"})
    code, out, err = run_cli(capsys, "batch", jobs)
    assert code == 4
    assert "FAIL 1/2 line 1: internal error: RuntimeError: stand-in bug" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.mp4", "jobs.jsonl"]  # a-1.* removed
    assert "Traceback" not in err
    code, out, err = run_cli(capsys, "--debug", "batch", jobs)
    assert code == 4 and "Traceback" in err and "stand-in bug" in err


def test_ctrl_c_stops_the_batch_and_leaves_no_partial_output(tmp_path, capsys, fake_t2v):
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      {"command": "t2v", "prompt": "fine", "output": "a.mp4"},
                      {"command": "t2v", "prompt": ["fine", "stop"], "output": "b.mp4"},
                      {"command": "t2v", "prompt": "fine", "output": "c.mp4"})
    code, out, err = run_cli(capsys, "batch", jobs)
    assert code == 130
    assert "batch interrupted after 1 of 3 jobs" in err and "--skip-existing" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.mp4", "jobs.jsonl"]
