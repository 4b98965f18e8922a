"""dfdtrain protocol with a suite's ``robustness`` block (issue 35): every test set scored again under each
perturbation at each level, written beside the clean table as robustness.json/.md/.png; the clean table is the
plain protocol's, number for number."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from support import assert_valid_png

SET = "Synth val"
ROBUSTNESS = {"types": ["h264", "blur"], "levels": [5, 1]}  # written out of order: run in TYPES' and level order


def write_suite(path, **extra):
    path.write_text(yaml.safe_dump({"name": "robust suite", "test_sets": {SET: "shards/val-*.tar"}, **extra},
                                   sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory):
    """The same one-set suite scored plainly and with robustness, side by side (the set is the run's own
    validation shards: --allow-overlap)."""
    folder = tmp_path_factory.mktemp("robustness")
    plain = write_suite(folder / "plain.yaml", root=str(trained_run.parent))
    robust = write_suite(folder / "robust.yaml", root=str(trained_run.parent), robustness=ROBUSTNESS)
    commands = [[sys.executable, "-m", "dfdtrain", "protocol", "--checkpoint", str(trained_run), "--suite", str(suite),
                 "--out", str(folder / name), "--workers", "0", "--bootstrap", "200", "--allow-overlap"]
                for name, suite in (("plain", plain), ("robust", robust))]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command in commands]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return folder / "plain", folder / "robust", subprocess.CompletedProcess(commands[1], 0, *outputs[1])


def test_robustness_writes_three_files_and_the_clean_rows_equal_a_plain_run(runs):
    plain, robust, result = runs
    clean = json.loads((plain / "table.json").read_text())["test_sets"][SET]
    table = json.loads((robust / "table.json").read_text())
    for level in ("video", "frame"):  # the clean table is the plain protocol's, to the last digit
        assert json.dumps(table["test_sets"][SET][level]) == json.dumps(clean[level])
    assert table["robustness"] == {"types": ["blur", "h264"], "levels": [1, 5]}
    assert "[robustness.md](robustness.md)" in (robust / "table.md").read_text()
    assert not (plain / "robustness.json").exists() and not (plain / "sets" / "synth-val" / "robustness").exists()

    # the cost, before anything is scored; the files named at the end
    assert "robustness: 4 videos x 4 perturbations (2 types x 2 levels) = 16 video scorings in 4 evaluations after " \
           "the clean pass; h264 re-encodes every source video 2 time(s) with libx264 before decoding (8 encodes)" \
           in result.stdout
    assert result.stdout.index("robustness: 4 videos") < result.stdout.index(f"[1/1] {SET}")
    assert "wrote table.json, table.md, protocol.png, robustness.json, robustness.md, robustness.png" in result.stdout
    assert f"robustness: {SET}: mean AUC " in result.stdout and "robustness: 100%" in result.stderr

    data = json.loads((robust / "robustness.json").read_text())
    assert (data["types"], data["levels"]) == (["blur", "h264"], [1, 5])
    assert data["parameters"]["blur"]["values"] == {"1": 7, "2": 9, "3": 13, "4": 17, "5": 21}
    assert data["parameters"]["h264"]["meaning"].startswith("libx264 CRF")
    entry = data["sets"][SET]
    assert entry["clean"]["video"] == {key: clean["video"][key] for name in ("auc", "log_loss", "ece")
                                       for key in (name, f"{name}_ci")}
    aucs, changed = [], []
    for kind in ("blur", "h264"):
        assert set(entry[kind]) == {"1", "5"}
        for level in ("1", "5"):
            video = entry[kind][level]["video"]
            assert {"auc", "auc_ci", "log_loss", "ece"} <= set(video)
            assert video["auc_ci"] is None or (len(video["auc_ci"]) == 2 and
                                               video["auc_ci"][0] - 1e-12 <= video["auc"] <= video["auc_ci"][1] + 1e-12)
            assert entry[kind][level]["videos"] == 4 and entry[kind][level]["not_scored"] == 0
            metrics = json.loads((robust / entry[kind][level]["evaluation"] / "metrics.json").read_text())
            assert metrics["perturbation"]["spec"] == f"{kind}:{level}"
            assert metrics["video"]["head"]["auc"] == video["auc"]
            aucs.append(video["auc"])
            changed.append(video["log_loss"] != clean["video"]["log_loss"])
        assert entry["mean_auc_by_type"][kind] == pytest.approx(np.mean([entry[kind][lv]["video"]["auc"]
                                                                         for lv in ("1", "5")]))
    assert entry["mean_auc"] == pytest.approx(np.mean(aucs))
    assert any(changed)  # the perturbations reached the model

    markdown = (robust / "robustness.md").read_text()
    assert "| perturbation | clean | level 1 | level 5 | mean |" in markdown
    assert f"| blur | {clean['video']['auc']:.3f} | {entry['blur']['1']['video']['auc']:.3f} | " in markdown
    assert "| h264 | libx264 CRF of the source video (VC) | 30 | 40 |" in markdown
    assert_valid_png(robust / "robustness.png")


def test_bad_robustness_blocks_are_one_line(trained_run, tmp_path, capsys):
    from dfdtrain.cli import main
    from dfdtrain.evaluation.protocol import load_suite

    def refused(robustness):  # in this process: refused before a process group or a model exists
        suite = write_suite(tmp_path / "bad.yaml", root=str(trained_run.parent), robustness=robustness)
        status = main(["protocol", "--checkpoint", str(trained_run), "--suite", str(suite), "--out",
                       str(tmp_path / "out")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("dfdtrain protocol: error: "), lines
        assert f"{suite}: robustness" in lines[0]
        return lines[0]

    line = refused({"types": ["blur", "jpg"]})
    assert "unknown perturbation 'jpg'" in line and "(known: saturation, contrast, block, noise, blur, jpeg" in line
    assert "6 is not a level (levels are 1, 2, 3, 4, 5;" in refused({"levels": [1, 6]})
    assert "0 is not a level" in refused({"levels": 0})
    assert "unknown key 'level' (known: types, levels)" in refused({"level": [1]})
    assert "must be a mapping" in refused("all")
    assert not (tmp_path / "out").exists()

    for value in ({}, True, None):  # the defaults: every type at every level
        suite = load_suite(write_suite(tmp_path / "all.yaml", robustness=value))
        assert len(suite.robustness.conditions) == 40 and suite.robustness.types[-1] == "resize"
    assert load_suite(write_suite(tmp_path / "off.yaml", robustness=False)).robustness is None
    assert load_suite(write_suite(tmp_path / "none.yaml")).robustness is None
