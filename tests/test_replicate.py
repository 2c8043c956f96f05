"""Tests of dr_saliency.jobs.replicate: seed parsing, refusing to mix experiments, cross-seed summary,
and one end-to-end run of the command on the smoke profile."""

import json
import os

import numpy as np
import pytest

from dr_saliency.jobs import replicate
from test_cli import run_main  # the console-script entry point, called in-process


def test_parse_seeds():
    assert replicate.parse_seeds("1,2,3") == [1, 2, 3]
    assert replicate.parse_seeds(" 7 , 11") == [7, 11]
    assert replicate.parse_seeds("0,4294967295") == [0, 2 ** 32 - 1]
    for bad in ("1,a", "", "1,1", "-1", "1.5", "4294967296"):
        with pytest.raises(ValueError, match=r"integer seeds from 0 to 4294967295, e.g. 1,2,3. "
                                             r"Received: seeds="):
            replicate.parse_seeds(bad)


def test_run_replicate_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"distinct integer seeds from 0 to 4294967295. "
                                         r"Received: seeds=\[1, 1\]"):
        replicate.run_replicate(str(tmp_path), [1, 1])
    with pytest.raises(ValueError, match=r"Received: seeds=\[4294967296\]"):
        replicate.run_replicate(str(tmp_path), [2 ** 32])
    with pytest.raises(ValueError, match=r"n_boot >= 10. Received: n_boot=2"):
        replicate.run_replicate(str(tmp_path), [1], n_boot=2)
    with pytest.raises(ValueError, match=r"profile in \['quick', 'reference', 'smoke'\]. Received: profile='x'"):
        replicate.run_replicate(str(tmp_path), [1], profile="x")


def test_a_folder_holding_another_experiment_is_refused_with_the_differences(tmp_path):
    out = str(tmp_path / "exp")
    replicate._claim(out, replicate.experiment_settings("smoke", 20))
    replicate._claim(out, replicate.experiment_settings("smoke", 20))  # the same: accepted
    with pytest.raises(ValueError, match=r"refusing to mix.*n_boot=30 \(folder has 20\)"):
        replicate._claim(out, replicate.experiment_settings("smoke", 30))
    with pytest.raises(ValueError, match=r'profile="quick" \(folder has "smoke"\)'):
        replicate._claim(out, replicate.experiment_settings("quick", 20))


def _seed(seed, gain3, kappa):
    row = {"images": 10, "lesions": 50, "s0_as10": 0.1, "S_as10": 0.1 * (1 + gain3),
           "gain_as10": gain3, "gain_as10_ci": [gain3 - 0.1, gain3 + 0.1], "s0_score": 0.2,
           "S_score": 0.2, "gain_score": 0.0, "gain_score_ci": [0.0, 0.0]}
    rules = {rule: {"stage 3": dict(row), "all": dict(row)} for rule in replicate.RULES}
    return {"seed": seed, "kappa": kappa, "auc": 0.9, "n_refined": 10,
            "stop_reasons": {"normal": 10}, "rules": rules}


def test_summary_gives_mean_sample_sd_and_range_across_seeds(tmp_path):
    per_seed = {1: _seed(1, 0.10, 0.8), 2: _seed(2, -0.05, 0.7), 3: _seed(3, 0.25, 0.9)}
    summary = replicate.summarize(per_seed, replicate.experiment_settings("smoke", 20))
    gain = summary["across"]["ours"]["stage 3"]["gain_as10"]
    assert gain["mean"] == pytest.approx(0.10)
    assert gain["sd"] == pytest.approx(np.std([0.10, -0.05, 0.25], ddof=1))
    assert (gain["min"], gain["max"], gain["n"]) == (pytest.approx(-0.05), pytest.approx(0.25), 3)
    assert summary["across"]["grader"]["kappa"]["mean"] == pytest.approx(0.8)
    assert "stage 4" not in summary["across"]["ours"]
    text = replicate.report_markdown(summary)
    assert "| stage 3 |" in text and "+10.0% ± 15.0% | -5.0% to +25.0% |" in text
    paths = replicate.write_report(summary, str(tmp_path), formats=("png",))
    assert all(os.path.getsize(p) > 0 for p in paths)


@pytest.mark.slow
def test_replicate_command_end_to_end_on_the_smoke_profile(tmp_path, capsys):
    out = str(tmp_path / "rep")
    code, stdout, err = run_main(["replicate", "--seeds", "4", "--profile", "smoke", "--out", out,
                                  "--bootstrap", "20"], capsys)
    assert code == 0, err
    assert "== seed 4 (1/1) ==" in stdout and "[score] done" in stdout
    summary = json.load(open(os.path.join(out, "replicate.json")))
    assert summary["seeds"] == [4] and set(summary["per_seed"]["4"]["rules"]) == {"ours", "paper"}
    with open(os.path.join(out, "seed_4", "data", "synth.json")) as f:
        assert json.load(f)["seed"] == 4
    with open(os.path.join(out, "seed_4", "run", "config.json")) as f:
        assert '"seed": 4,' in f.read()
    # A rerun continues: every step is already done and nothing is recomputed.
    code, stdout, _ = run_main(["replicate", "--seeds", "4", "--profile", "smoke", "--out", out,
                                "--bootstrap", "20"], capsys)
    assert code == 0 and stdout.count("already done") == 5
    # Bad input: one line on stderr, non-zero exit, nothing lost.
    code, _, err = run_main(["replicate", "--seeds", "1,x", "--out", out], capsys)
    assert code == 1 and err.strip().count("\n") == 0
    assert err.startswith("Error: Expected comma-separated distinct integer seeds from 0 to")
    code, _, err = run_main(["replicate", "--seeds", "4", "--profile", "quick", "--out", out],
                            capsys)
    assert code == 1 and 'profile="quick" (folder has "smoke")' in err
    assert os.path.isfile(os.path.join(out, "seed_4", "scores.json"))


def test_a_relative_gain_over_an_s0_that_finds_nothing_is_not_reported():
    from dr_saliency.jobs import replicate

    row = {"s0_as10": 0.0004, "S_as10": 0.0, "gain_as10": -1.0, "gain_as10_ci": [-1.0, -0.5],
           "s0_score": 0.3, "S_score": 0.33, "gain_score": 0.1, "gain_score_ci": [0.05, 0.15]}
    scores = {"kappa": 0.7, "rules": {"ours": {"type HE": row}}}
    cleaned = replicate._defined_gains(scores)["rules"]["ours"]["type HE"]
    assert cleaned["gain_as10"] is None and cleaned["gain_as10_ci"] == [None, None]
    assert cleaned["gain_score"] == 0.1 and cleaned["gain_score_ci"] == [0.05, 0.15]
    assert scores["rules"]["ours"]["type HE"]["gain_as10"] == -1.0  # the input is left alone
