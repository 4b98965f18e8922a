"""dfdtrain protocol: one checkpoint on every test set of a suite, for real (trained detector, real shards)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from support import REPO, assert_valid_png, run_cli

SETS = ("Synth val", "FF++ 183-253")


@pytest.fixture(scope="module")
def suite(trained_run, ffpp_shards, tmp_path_factory):
    """A suite with two test sets from different indexes: the trained detector's generated val shards and real
    FF++ shards (one source pair: reals and each method's fakes)."""
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "smoke suite", "description": "generated clips and real FF++ c40: a smoke test, not a result",
        "root": str(trained_run.parent),
        "test_sets": {SETS[0]: "shards/val-*.tar",
                      SETS[1]: {"shards": f"{ffpp_shards}/*.tar", "note": "one source pair"}}}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def one_rank(trained_run, suite, tmp_path_factory):
    """The suite scored with --allow-overlap: its first set is the run's own validation shards."""
    out = tmp_path_factory.mktemp("protocol") / "one"
    result = run_cli("protocol", "--checkpoint", trained_run, "--suite", suite, "--out", out, "--workers", "0",
                     "--bootstrap", "300", "--allow-overlap")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def run_clis(*commands):
    """Several real `python -m dfdtrain ARGS` side by side (each a list of arguments): their CompletedProcesses."""
    processes = [subprocess.Popen([sys.executable, "-m", "dfdtrain", *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for args in commands]
    results = []
    for args, process in zip(commands, processes):
        stdout, stderr = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return results


def one_line_error(result, command="protocol"):
    """The one line a refused command printed (it exited 2, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"dfdtrain {command}: error: "), lines
    return lines[0]


def run_split(trained_run, split):
    """(sorted keys, sorted groups) of the videos of one split of the trained run's index (its manifest)."""
    rows = [json.loads(line) for line in (trained_run.parent / "m.jsonl").read_text().splitlines() if line.strip()]
    rows = [row for row in rows if isinstance(row, dict) and row.get("split") == split]
    return sorted(row["key"] for row in rows), sorted({row["group"] for row in rows})


def test_protocol_writes_one_table_for_test_sets_of_two_indexes(one_rank, trained_run):
    out, result = one_rank
    table = json.loads((out / "table.json").read_text())
    assert list(table["test_sets"]) == list(SETS) and table["suite"] == "smoke suite"
    assert table["checkpoint"] == str(trained_run / "checkpoints" / "best")
    assert table["calibration"].startswith("temperature ")
    assert "fitted on validation after epoch 1" in table["calibration"]
    synth, ffpp = (table["test_sets"][name] for name in SETS)
    assert (synth["videos"], synth["real"] + synth["fake"]) == (4, 4)
    assert (ffpp["videos"], ffpp["real"], ffpp["fake"]) == (10, 2, 8) and ffpp["groups"] == 1
    for entry in (synth, ffpp):
        assert entry["not_scored"] == 0 and entry["frames"] >= entry["videos"]
        for level in ("video", "frame"):
            for name in ("auc", "ap", "eer", "log_loss", "ece", "accuracy"):
                value, interval = entry[level][name], entry[level][f"{name}_ci"]
                if entry is ffpp:  # one source pair is one group: resampling it would give a point, no interval
                    assert interval is None, (level, name, interval)
                else:
                    assert interval[0] - 1e-12 <= value <= interval[1] + 1e-12, (level, name, value, interval)
        assert entry["video"]["log_loss_raw"] is not None and entry["video"]["ece_raw"] is not None
        metrics = json.loads((out / entry["evaluation"] / "metrics.json").read_text())
        assert metrics["video"]["head"]["auc"] == entry["video"]["auc"]
        assert metrics["frame"]["auc"] == entry["frame"]["auc"]
    assert (synth["groups"], synth["groups_real"], synth["groups_fake"], synth["interval_note"]) == (2, 2, 2, None)
    assert (ffpp["groups"], ffpp["groups_real"], ffpp["groups_fake"]) == (1, 1, 1)
    assert ffpp["interval_note"].startswith("1 group (1 with real, 1 with fake videos)")
    assert set(ffpp["methods"]) == {"Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"}
    assert all(values["real"] == 2 and values["fake"] == 2 for values in ffpp["methods"].values())
    assert synth["methods"] == {}

    markdown = (out / "table.md").read_text()
    for name in SETS:
        assert markdown.count(f"[{name}](sets/") == 2  # a row in the video and the frame table
    assert "| FF++ 183-253 | NeuralTextures | 2 | 2 |" in markdown and "one source pair" in markdown
    assert f"| [{SETS[1]}]({ffpp['evaluation']}/report.md) | 10 (2 / 8) | 1 (1 / 1) | " in markdown
    assert f"{ffpp['video']['accuracy']:.3f} [n/a (1 group)]" in markdown
    assert_valid_png(out / "protocol.png")
    assert f"[1/2] {SETS[0]} (OVERLAP: shares 4 videos" in result.stdout
    assert f"[2/2] {SETS[1]}: 10 videos" in result.stdout

    # scored with --allow-overlap: the run's own validation set is marked, the FF++ set (other videos) is not
    keys, groups = run_split(trained_run, "val")
    assert synth["overlap"] == {"validation": {"videos": len(keys), "groups": len(groups), "example_video": keys[0],
                                               "example_group": groups[0]}}
    assert ffpp["overlap"] == {}
    leakage = table["leakage"]
    assert leakage["allowed"] and leakage["overlapping_sets"] == [SETS[0]] and leakage["unchecked"] is None
    assert set(leakage["compared_with"]) == {"training", "validation"}
    assert f"| [{SETS[0]}]({synth['evaluation']}/report.md) **OVERLAP** |" in markdown
    assert f"| [{SETS[1]}]({ffpp['evaluation']}/report.md) |" in markdown
    assert f"- {SETS[0]}: OVERLAP: shares {len(keys)} video(s)" in markdown and "- leakage: " in markdown


def test_a_one_group_set_prints_no_interval(trained_run, tmp_path):
    """The issue's case: a 1-group, 2-video test set (one person's real and fake clip) and a near-constant model
    at accuracy 0.5 used to print `0.500 [0.500, 0.500]`, a zero-width interval that looks certain. Now: `n/a (1
    group)` in table.md, null with the reason in table.json and the set's metrics.json, the groups named."""
    from support import constant_bundle, one_group, subset_shards

    bundle = constant_bundle(trained_run, tmp_path / "bundle")
    shards = subset_shards(trained_run, tmp_path / "one", one_group)
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "one face", "test_sets": {"One face": f"{shards}/*.tar"}}))
    out = tmp_path / "out"
    result = run_cli("protocol", "--checkpoint", bundle, "--suite", suite, "--out", out, "--workers", "0",
                     "--bootstrap", "200")
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads((out / "table.json").read_text())["test_sets"]["One face"]
    assert (entry["videos"], entry["real"], entry["fake"]) == (2, 1, 1) and entry["video"]["accuracy"] == 0.5
    for level in ("video", "frame"):
        assert all(entry[level][f"{name}_ci"] is None for name in ("auc", "ap", "eer", "log_loss", "ece", "accuracy"))
    markdown = (out / "table.md").read_text()
    assert "0.500 [n/a (1 group)]" in markdown and "[0.500, 0.500]" not in markdown
    assert (entry["groups"], entry["groups_real"], entry["groups_fake"]) == (1, 1, 1)
    reason = entry["interval_note"]
    assert reason.startswith("1 group (1 with real, 1 with fake videos)") and "at least 2 groups of each" in reason
    intervals = json.loads((out / entry["evaluation"] / "metrics.json").read_text())["intervals"]
    assert intervals["problem"] == reason and intervals["groups_by_class"] == {"real": 1, "fake": 1}
    assert all(value is None for level in ("video", "frame") for value in intervals[level].values())
    assert f"| [One face]({entry['evaluation']}/report.md) | 2 (1 / 1) | 1 (1 / 1) | " in markdown
    assert f"- One face: No intervals: {reason}." in markdown
    assert "[1/1] One face: 2 videos, 1 group, video AUC 0.500 [n/a (1 group)]" in result.stdout
    assert "n/a (1 group)" in (out / entry["evaluation"] / "report.md").read_text()


def test_protocol_on_two_ranks_equals_one_rank(one_rank, trained_run, suite, tmp_path):
    out = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29673", "-m", "dfdtrain",
         "protocol", "--checkpoint", str(trained_run), "--suite", str(suite), "--out", str(out), "--only", SETS[0],
         "--workers", "0", "--bootstrap", "300", "--allow-overlap"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((out / "table.json").read_text())["test_sets"]
    one = json.loads((one_rank[0] / "table.json").read_text())["test_sets"]
    assert list(two) == [SETS[0]]
    for level in ("video", "frame"):  # the same records, sorted and resampled alike: the same numbers
        assert json.dumps(two[SETS[0]][level]) == json.dumps(one[SETS[0]][level])


def test_suite_problems_are_one_line(trained_run, suite, tmp_path, capsys):
    from dfdtrain.cli import main

    def refused(*args):  # in this process: every one is refused before a process group or a model exists
        status = main(["protocol", "--checkpoint", str(trained_run), "--out", str(tmp_path / "out"), *map(str, args)])
        stderr = capsys.readouterr().err
        assert status == 2, stderr[-2000:]
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dfdtrain protocol: error: ")
        return lines[0]

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntest_set: {a: b}\n")
    assert "unknown suite key 'test_set'" in refused("--suite", bad)
    assert "no test set 'DFDC'" in refused("--suite", suite, "--only", "DFDC")
    assert "nope.yaml" in refused("--suite", tmp_path / "nope.yaml")
    line = refused("--suite", suite, "--root", tmp_path)
    assert f"test set '{SETS[0]}'" in line and "shards/val-*.tar" in line and "--only" in line
    assert not (tmp_path / "out").exists()


def test_test_sets_sharing_videos_or_groups_with_the_run_are_refused(trained_run, suite, tmp_path):
    """The checkpoint's own validation shards (AUC 1.000 in the attack) or its training shards (0.994) as a
    test set: refused with the number of shared videos and groups and an example of each, before any scoring."""
    train_suite = tmp_path / "train.yaml"
    train_suite.write_text(yaml.safe_dump({"name": "own training data", "test_sets": {
        "Synth train": f"{trained_run.parent}/shards/train-*.tar"}}))
    common = ("protocol", "--checkpoint", trained_run, "--workers", "0", "--bootstrap", "0")
    validation, training = run_clis([*common, "--suite", suite, "--out", tmp_path / "val"],
                                    [*common, "--suite", train_suite, "--out", tmp_path / "train"])
    for result, name, split, role, path in ((validation, SETS[0], "val", "validation", suite),
                                            (training, "Synth train", "train", "training", train_suite)):
        line = one_line_error(result)
        keys, groups = run_split(trained_run, split)
        assert len(keys) >= 4 and len(groups) >= 2
        assert f"test set {name!r} of {path} shares {len(keys)} videos (e.g. {keys[0]!r}) and {len(groups)} groups " \
               f"(e.g. {groups[0]!r}) with the run's {role} shards ({trained_run.parent}/shards/" in line, line
        assert "--allow-overlap" in line
    assert not (tmp_path / "val").exists() and not (tmp_path / "train").exists()


def test_a_suite_file_runs_no_command_without_allow_pipe(trained_run, suite, tmp_path):
    """A suite's pipe: test set (or root) is refused without --allow-pipe, and nothing runs; with it the suite
    loads (here it then stops at the overlap check of its other set, still before any command ran)."""
    marker = tmp_path / "ran"
    val_tar = sorted((trained_run.parent / "shards").glob("val-*.tar"))[0]
    piped = tmp_path / "piped.yaml"
    piped.write_text(yaml.safe_dump({"name": "piped", "test_sets": {
        SETS[0]: f"{trained_run.parent}/shards/val-*.tar", "Piped": f"pipe:touch {marker} && cat {val_tar}"}}))
    rooted = tmp_path / "rooted.yaml"
    rooted.write_text(yaml.safe_dump({"name": "rooted", "root": f"pipe:touch {marker}; cat ",
                                      "test_sets": {"A": "x.tar"}}))
    common = ("protocol", "--checkpoint", trained_run, "--out", tmp_path / "out", "--workers", "0")
    refused, refused_root, allowed = run_clis([*common, "--suite", piped], [*common, "--suite", rooted],
                                              [*common, "--suite", piped, "--allow-pipe"])
    line = one_line_error(refused)
    assert f"{piped}: test_sets.Piped: 'pipe:touch {marker} && cat {val_tar}' is a pipe: command" in line
    assert "--allow-pipe" in line
    assert f"{rooted}: 'root' 'pipe:touch {marker}; cat ' is a pipe: command" in one_line_error(refused_root)
    assert f"test set {SETS[0]!r} of {piped} shares 4 videos" in one_line_error(allowed)
    assert not marker.exists() and not (tmp_path / "out").exists()

    from dfdtrain.evaluation.protocol import load_suite

    loaded = load_suite(piped, allow_pipe=True)  # the command line's --root stays the caller's own
    assert loaded.test_sets["Piped"].shards == [f"pipe:touch {marker} && cat {val_tar}"]


def test_bad_roots_binary_suites_and_an_out_file_are_one_line(trained_run, tmp_path):
    """A suite whose root is a list or a number, a binary suite file, --out naming a file: one line each."""
    suites = {}
    for name, root in (("list", ["a", "b"]), ("number", 5)):
        suites[name] = tmp_path / f"{name}.yaml"
        suites[name].write_text(yaml.safe_dump({"name": name, "root": root, "test_sets": {"A": "x.tar"}}))
    suites["binary"] = tmp_path / "binary.yaml"
    suites["binary"].write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"name": "good", "test_sets": {"A": f"{trained_run.parent}/shards/val-*.tar"}}))
    out_file = tmp_path / "taken.txt"
    out_file.write_text("not a folder")
    common = ("protocol", "--checkpoint", trained_run, "--workers", "0")
    results = run_clis(*([*common, "--suite", suites[name], "--out", tmp_path / "out"] for name in suites),
                       [*common, "--suite", good, "--out", out_file, "--allow-overlap"])
    lines = [one_line_error(result) for result in results]
    assert f"{suites['list']}: 'root' must be a folder (a non-empty string)" in lines[0] and "['a', 'b']" in lines[0]
    assert f"{suites['number']}: 'root' must be a folder (a non-empty string)" in lines[1] and "not 5" in lines[1]
    assert f"{suites['binary']}: not a suite file: not UTF-8 text" in lines[2]
    assert f"--out {out_file} is an existing file, not a folder" in lines[3]
    assert out_file.read_text() == "not a folder" and not (tmp_path / "out").exists()


def test_shipped_suites_load():
    from dfdtrain.evaluation.protocol import load_suite

    suites = sorted((REPO / "configs" / "protocols").glob("*.yaml"))
    assert len(suites) >= 3
    for path in suites:
        suite = load_suite(path, root="/data/shards")
        assert suite.test_sets and all(pattern.startswith("/data/shards/") for test_set in suite.test_sets.values()
                                       for pattern in test_set.shards)
    cross = load_suite(REPO / "configs" / "protocols" / "ffpp_c23_cross.yaml")
    assert {"Celeb-DF v2", "DFDC", "DFDC-Preview", "DFD"} <= set(cross.test_sets)
