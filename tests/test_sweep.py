"""W&B logging (offline, disabled, absent) and sweeps, with and without a W&B server."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from seq2seq import config as run_config
from seq2seq.run import main as train_main
from tests.helpers import ROOT, run_script

TINY = ["--hidden-size", "8", "--encoder-layers", "1", "--decoder-layers", "1", "--batch-size", "4",
        "--device", "cpu", "--eval-every", "2"]  # fmt: skip


def env(tmp_path: Path) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**clean, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}


def run(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return run_script(script, *args, cwd=tmp_path, env=env(tmp_path))


def test_offline_run_writes_a_run_folder_without_an_api_key(pair_dir, tmp_path):
    result = run(
        "train.py",
        [*TINY, "--data-dir", str(pair_dir), "--iterations", "4", "--use-wandb", "--plot"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no W&B API key found: logging offline" in result.stderr
    assert (tmp_path / "checkpoints" / "training_loss.png").exists()  # --plot alone: in --save-dir
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_disabled_run_writes_nothing(pair_dir, tmp_path):
    result = run("train.py", [*TINY, "--data-dir", str(pair_dir), "--iterations", "2", "--use-wandb",
                              "--wandb-mode", "disabled"], tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "wandb").exists()


def test_without_use_wandb_nothing_imports_it(pair_dir, tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from seq2seq.run import main; "
            f"main({[*TINY, '--data-dir', str(pair_dir), '--iterations', '2', '--save-dir', str(tmp_path)]!r}); "
            "print('wandb imported' if 'wandb' in sys.modules else 'no wandb')")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("no wandb")


def test_a_wandb_agents_run_trains_in_a_folder_named_after_it(monkeypatch):
    from seq2seq.tracking import sweep_run_folder

    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.setenv("WANDB_RUN_ID", "a1b2c3")
    assert sweep_run_folder("checkpoints/sweep") is None  # a run of its own, outside any sweep
    monkeypatch.setenv("WANDB_SWEEP_ID", "s9")
    assert sweep_run_folder("checkpoints/sweep") == str(Path("checkpoints/sweep/a1b2c3"))
    for hostile in ("../../etc", "a/b", "", "x" * 65):
        monkeypatch.setenv("WANDB_RUN_ID", hostile)
        assert sweep_run_folder("checkpoints/sweep") is None


def test_two_agents_on_one_machine_train_side_by_side_into_their_own_folders(pair_dir, tmp_path):
    def agent_run(run_id: str) -> subprocess.Popen:  # what `wandb agent` starts: the command, its env
        agent_env = {**env(tmp_path), "WANDB_SWEEP_ID": "s9", "WANDB_RUN_ID": run_id}
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), "--use-wandb", "--wandb-mode", "disabled",
             "--save-dir=checkpoints/sweep", "--data-dir", str(pair_dir), *TINY, "--iterations", "4"],
            cwd=tmp_path, env=agent_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    runs = [agent_run("first"), agent_run("second")]
    for process in runs:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
    for run_id in ("first", "second"):
        assert (tmp_path / "checkpoints" / "sweep" / run_id / "best_model.pth").exists()
    assert not (tmp_path / "checkpoints" / "sweep" / "last.pth").exists()


@pytest.mark.parametrize("name", ["sweep_config.yaml", "sweep_seed_config.yaml"])
def test_every_sweep_parameter_is_a_train_flag_in_the_agents_spelling(name):
    config = yaml.safe_load((ROOT / name).read_text())
    assert config["program"] == "train.py" and config["metric"] == {"name": "val_loss", "goal": "minimize"}
    for name, spec in config["parameters"].items():
        value = spec["values"][-1] if "values" in spec else spec["max"]
        given = run_config.parse([f"--{name}={value}"])
        assert str(given[name]) == str(value) or given[name] == float(value), name
    fixed = [a for a in config["command"] if a.startswith("--")]
    run_config.parse(fixed)  # the command's own flags are train.py flags too


def test_sweep_runs_trials_writes_plots_and_resumes(pair_dir, tmp_path):
    config = yaml.safe_load((ROOT / "sweep_config.yaml").read_text())
    config["parameters"]["batch_size"] = {"values": [4, 8]}  # the tiny corpus holds fewer than 64 pairs
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    flags = ["--config", str(tmp_path / "sweep.yaml"), "--data-dir", str(pair_dir), *TINY, "--iterations", "4",
             "--save-every", "4"]  # fmt: skip
    first = run("sweep.py", [*flags, "--trials", "1"], tmp_path)  # a sweep that stopped after one trial
    assert first.returncode == 0, first.stderr[-2000:]
    assert "best trial 0" in first.stdout
    db = sqlite3.connect(tmp_path / "checkpoints" / "sweeps" / "sweeps.db")
    first_params = db.execute(
        "SELECT param_name, param_value FROM trial_params WHERE trial_id = 1"
    ).fetchall()
    db.close()

    second = run("sweep.py", [*flags, "--trials", "3"], tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "1 trials finished, 2 to run" in second.stderr
    assert "trial 0:" not in second.stderr  # not repeated
    db = sqlite3.connect(tmp_path / "checkpoints" / "sweeps" / "sweeps.db")
    states = [s for (s,) in db.execute("SELECT state FROM trials ORDER BY number")]
    assert states == ["COMPLETE"] * 3 or (len(states) == 3 and set(states) <= {"COMPLETE", "PRUNED"})
    assert (
        db.execute("SELECT param_name, param_value FROM trial_params WHERE trial_id = 1").fetchall()
        == first_params
    )
    db.close()
    assert "parameter importances:" in second.stdout
    for name in ("sweep_parallel_coordinates.png", "sweep_importance.png"):  # beside the study, by default
        assert (tmp_path / "checkpoints" / "sweeps" / name).read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "images").exists()
    rows = list(csv.DictReader((tmp_path / "checkpoints" / "sweeps" / "sweep_trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and all(float(r["val_loss"]) > 0 for r in rows)
    assert {r["batch_size"] for r in rows} <= {"4", "8"} and "learning_rate" in rows[0]
    trials = tmp_path / "checkpoints" / "sweep" / "chatbot-seq2seq-sweep"  # in the command's --save-dir
    for n in range(3):  # each trial kept its best model in a folder of its own
        trial = trials / f"trial-{n}"
        assert (trial / "best_model.pth").exists() and not (trial / "last.pth").exists()


def test_seeds_rerun_the_best_and_middling_trials_and_weigh_importances_against_them(pair_dir, tmp_path):
    config = yaml.safe_load((ROOT / "sweep_config.yaml").read_text())
    config["parameters"]["batch_size"] = {"values": [4, 8]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    flags = ["--config", str(tmp_path / "sweep.yaml"), "--data-dir", str(pair_dir), *TINY, "--iterations", "4",
             "--trials", "6", "--seeds", "1", "--seed", "3"]  # fmt: skip
    first = run("sweep.py", flags, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    folder = tmp_path / "checkpoints" / "sweeps"
    trials = list(csv.DictReader((folder / "sweep_trials.csv").open()))
    complete = sorted((r for r in trials if r["state"] == "complete"), key=lambda r: float(r["val_loss"]))
    reruns = list(csv.DictReader((folder / "sweep_seeds.csv").open()))
    rest = complete[3:]
    expected = complete[:3] + rest[max(0, len(rest) // 2 - 1) : len(rest) // 2 + 1]
    assert sorted(r["of_trial"] for r in reruns) == sorted(r["trial"] for r in expected)
    assert {r["seed"] for r in reruns} == {"4"}  # the sweep's own seed (--seed 3) and one more
    for rerun in reruns:  # the same values, another seed
        original = next(r for r in trials if r["trial"] == rerun["of_trial"])
        assert rerun["learning_rate"] == original["learning_rate"] and rerun["state"] == "complete"
    assert "pooled seed-to-seed sd of val_loss" in first.stdout
    assert "above the seed spread" in first.stdout or "NOT established" in first.stdout
    again = run("sweep.py", flags, tmp_path)  # resumed: nothing left to train
    assert again.returncode == 0 and "0 reruns under other seeds to run" in again.stderr, again.stderr[-2000:]


def test_importances_among_one_value_leave_the_other_values_trials_out(tmp_path, capsys):
    import optuna

    from seq2seq.sweeps import among, report

    space = {"optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"]),
             "clip": optuna.distributions.FloatDistribution(10, 100),
             "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True)}  # fmt: skip
    study = optuna.create_study()
    for n in range(12):  # sgd is far worse; among adam, only the learning rate matters
        optimizer, clip, lr = ("adam", "sgd")[n % 2], 10 + 7.5 * n, 1e-4 * (1 + n % 5)
        value = (6.0 if optimizer == "sgd" else 3.0) + 1000 * lr
        study.add_trial(optuna.trial.create_trial(params={"optimizer": optimizer, "clip": clip, "learning_rate": lr},
                                                  distributions=space, value=value))  # fmt: skip
    assert [t.params["optimizer"] for t in among(study, "optimizer", "adam").trials] == ["adam"] * 6
    config = {"metric": {"name": "val_loss"}, "parameters": {"optimizer": {"values": ["adam", "sgd"]},
              "clip": {"min": 10, "max": 100}, "learning_rate": {"min": 1e-4, "max": 1e-3}}}  # fmt: skip
    report(study, config, None, tmp_path, "s", where=("optimizer", "adam"))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("parameter importances"))
    assert line.startswith("parameter importances among optimizer=adam (6 trials): learning_rate ")
    assert "optimizer" not in line.split(":", 1)[1]
    rows = (tmp_path / "s_trials.csv").read_text().splitlines()
    assert (tmp_path / "s_importance.png").exists() and len(rows) == 13  # every trial, adam's or not


def test_sweep_refuses_an_among_that_names_no_parameter(tmp_path):
    result = run(
        "sweep.py",
        ["--config", str(ROOT / "sweep_config.yaml"), "--trials", "1", "--among", "colour=red"],
        tmp_path,
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "error: --among colour=red: give NAME=VALUE with NAME one of batch_size, learning_rate, clip, "
        "teacher_forcing_ratio, decoder_learning_ratio, optimizer, dropout, output_dropout, tie_embeddings"
    ]


def test_the_pruner_stops_no_trial_before_its_min_iter_th_validation():
    import optuna

    from seq2seq.sweeps import pruner

    def first_stop(min_iter: int) -> int:
        """The earliest step at which one of six hopeless trials, after ten good ones, is stopped
        (Hyperband puts each trial in one of its brackets, whose first rungs differ)."""
        config = {"early_terminate": {"type": "hyperband", "min_iter": min_iter}}
        study = optuna.create_study(pruner=pruner(config, {"eval_every": 100, "iterations": 1000}))
        for n in range(10):
            trial = study.ask()
            for step in range(100, 1001, 100):
                trial.report(4.0 - step / 1000 + n / 100, step)
                trial.should_prune()
            study.tell(trial, 3.0 + n / 100)
        stops = []
        for _ in range(6):
            hopeless = study.ask()
            for step in range(100, 1001, 100):
                hopeless.report(9.0, step)
                if hopeless.should_prune():
                    stops.append(step)
                    break
            study.tell(hopeless, state=optuna.trial.TrialState.PRUNED)
        return min(stops)

    assert first_stop(1) == 100  # W&B's min_iter counts validations: 1 may stop a trial at its first
    assert first_stop(3) == 300
    assert isinstance(pruner({}, {"eval_every": 100, "iterations": 1000}), optuna.pruners.NopPruner)


def test_ctrl_c_in_a_trial_ends_the_sweep_in_one_line_and_keeps_its_finished_trials(pair_dir, tmp_path):
    config = yaml.safe_load((ROOT / "sweep_config.yaml").read_text())
    config["parameters"]["batch_size"] = {"values": [4]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    argv = [sys.executable, str(ROOT / "sweep.py"), "--config", str(tmp_path / "sweep.yaml"), "--data-dir",
            str(pair_dir), *TINY, "--iterations", "1000000", "--eval-every", "1000000", "--trials", "2"]  # fmt: skip
    sweep = subprocess.Popen(argv, cwd=tmp_path, env=env(tmp_path), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in sweep.stderr:  # the trial's progress bar has started: training is under way
        if line.startswith("training: "):
            break
    time.sleep(1)
    sweep.send_signal(signal.SIGINT)
    _, rest = sweep.communicate(timeout=120)
    assert sweep.returncode == 130 and "Traceback" not in rest, rest[-2000:]
    assert rest.strip().splitlines()[-1] == (
        "error: interrupted: finished trials are kept in the study; run the same command to go on"
    )


def test_sweep_refuses_an_unsupported_config_in_one_line(tmp_path):
    config = yaml.safe_load((ROOT / "sweep_config.yaml").read_text())
    config["parameters"]["clip"] = {"distribution": "normal", "mu": 1, "sigma": 1}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run("sweep.py", ["--config", str(tmp_path / "bad.yaml"), "--trials", "1"], tmp_path)
    assert result.returncode == 1 and "distribution normal" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not (tmp_path / "checkpoints").exists()


def test_sweep_refuses_a_mistyped_train_flag(tmp_path):
    result = run("sweep.py", ["--config", str(ROOT / "sweep_config.yaml"), "--trials", "1", "--lerning-rate", "0.1"],
                 tmp_path)  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0


class _FakeRun:
    """What WandbLogger uses of a wandb run, recording what it is given."""

    def __init__(self, config: dict):
        self.config = _FakeConfig(config)
        self.logged: list[dict] = []
        self.summary: dict = {}

    def log(self, values: dict, step: int | None = None) -> None:
        self.logged.append(values)

    def finish(self) -> None:
        pass


class _FakeConfig(dict):
    def update(self, values, allow_val_change=False):
        super().update(values)


def test_wandb_sample_replies_decode_with_the_runs_max_length(tmp_path, monkeypatch):
    import types

    from seq2seq import tracking
    from seq2seq.cornell import PairSettings
    from seq2seq.download import prepare_data
    from tests.helpers import PAIRS, write_pair_corpus

    corpus = write_pair_corpus(tmp_path / "corpus", PAIRS)
    prepare_data(
        tmp_path / "data", PairSettings(max_length=14, min_count=1, val_fraction=0.2), source=str(corpus)
    )
    runs = []
    fake = types.SimpleNamespace(init=lambda config, **_: runs.append(_FakeRun(config)) or runs[-1],
                                 Table=lambda columns: types.SimpleNamespace(add_data=lambda *row: None),
                                 Image=lambda path: path)  # fmt: skip
    monkeypatch.setitem(sys.modules, "wandb", fake)
    used = []
    real = tracking.reply_batch
    monkeypatch.setattr(
        tracking,
        "reply_batch",
        lambda m, v, q, settings, **kw: used.append(settings) or real(m, v, q, settings, **kw),
    )
    train_main([*TINY, "--data-dir", str(tmp_path / "data"), "--iterations", "2", "--eval-every", "1",
                "--use-wandb", "--save-dir", str(tmp_path / "run")])  # fmt: skip
    assert [s.max_length for s in used] == [14, 14]
    assert any("samples" in values for values in runs[0].logged)


def test_a_database_whose_driver_is_missing_is_one_line(tmp_path):
    import importlib.util

    if importlib.util.find_spec("pg8000"):
        pytest.skip("the pg8000 driver is installed here")
    result = run("sweep.py", ["--trials", "1", "--storage", "postgresql+pg8000://u:p@127.0.0.1:1/db",
                              "--config", str(ROOT / "sweep_config.yaml")], tmp_path)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --storage postgresql+pg8000: the database driver")
    )


@pytest.fixture
def postgres(tmp_path):
    """A PostgreSQL server of this test's own on 127.0.0.1 (skipped where none can run); its URL."""
    import glob
    import shutil
    import socket

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin")) + [os.path.dirname(shutil.which("initdb") or "")]
    found = next((b for b in bins if b and os.path.exists(os.path.join(b, "pg_ctl"))), None)
    if found is None:
        pytest.skip("no PostgreSQL server binaries here (apt install postgresql)")
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver here (pip install psycopg2-binary)")
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser to start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="chatbot-pg-"))  # pytest's own folders are closed to other users
    os.chmod(base, 0o755)
    data, sockets = base / "pg", base / "sockets"
    sockets.mkdir()
    if as_user:
        shutil.chown(sockets, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*args):
        return subprocess.run(
            [*as_user, os.path.join(found, args[0]), *args[1:]], capture_output=True, text=True
        )

    if as_user:
        data.mkdir()
        shutil.chown(data, "postgres")
    made = pg("initdb", "-D", str(data), "-A", "trust", "-U", "sweeper")
    if made.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"initdb failed here: {made.stderr.strip()[-200:]}")
    started = pg("pg_ctl", "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                 f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1", "start")  # fmt: skip
    assert started.returncode == 0, started.stderr + started.stdout
    try:
        yield f"postgresql+psycopg2://sweeper@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_workers_started_together_on_a_fresh_postgres_database_share_one_study(postgres, pair_dir, tmp_path):
    config = yaml.safe_load((ROOT / "sweep_config.yaml").read_text())
    config["parameters"]["batch_size"] = {"values": [4, 8]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    flags = ["--config", str(tmp_path / "sweep.yaml"), "--storage", postgres, "--study-name", "shared",
             "--data-dir", str(pair_dir), *TINY, "--iterations", "2", "--trials", "3"]  # fmt: skip
    workers = [subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *flags, "--images", str(tmp_path / f"i{n}")],
                                cwd=tmp_path, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for n in range(3)]  # fmt: skip
    results = [(w.communicate(timeout=300)[1], w) for w in workers]
    for stderr, worker in results:
        code = worker.returncode
        assert code == 0 and "Traceback" not in stderr, stderr[-2000:]
    import optuna

    study = optuna.load_study(study_name="shared", storage=postgres)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 3 <= len(finished) <= 9  # each worker stops once the study holds 3 finished trials
