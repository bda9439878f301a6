"""benchmarks/reply_quality.py: the grid on validation, the rule's choice, the test table once."""

import json

from seq2seq.cornell import write_pairs
from tests.helpers import PAIRS, run_script


def test_reply_quality_tunes_on_validation_and_reports_test(
    trained_checkpoint, backward_checkpoint, tmp_path
):
    write_pairs(tmp_path / "val.txt", PAIRS[:10])
    write_pairs(tmp_path / "test.txt", PAIRS[10:])
    command = ["benchmarks/reply_quality.py", "--model-path", str(trained_checkpoint),
               "--backward-model", str(backward_checkpoint), "--val-data", str(tmp_path / "val.txt"),
               "--test-data", str(tmp_path / "test.txt"), "--device", "cpu"]  # fmt: skip
    result = run_script(
        *command, "--max-top10", "1", "--min-distinct-2", "0", "--output-json", str(tmp_path / "r.json")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert len(saved["validation"]) == 6 * 7 * 4  # every search, every lambda and gamma
    assert set(saved["chosen"]) == {"beam + MMI", "diverse beam + MMI"}
    assert saved["chosen"]["diverse beam + MMI"]["beam_groups"] > 1
    names = [row["name"] for row in saved["test"]]
    assert names[:3] == ["greedy", "beam 5", "sample, T 0.8, top-p 0.9"] and len(names) == 5
    greedy = saved["test"][0]
    assert greedy["greedy_top10_share"] == greedy["top10_reply_share"]
    assert len(saved["samples"]["greedy"]) == len(saved["samples"]["prompts"])
    assert (
        "test (10 pairs), once:" in result.stdout
        and "chosen on validation (top-10 share at most 100%" in result.stdout
    )
    # ten pairs cannot have a top-10 share under 25%, nor greedy's halved: said in one line
    strict = run_script(*command)
    assert strict.returncode == 1 and strict.stderr.strip().splitlines()[-1].startswith(
        "error: no setting halves"
    )
