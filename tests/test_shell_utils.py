"""Tests of the recipe's own shell utilities (egs2/speechimp/utils, cmd.sh, path.sh, db.sh).

Every test drives the scripts through bash in a subprocess; the whole file runs in a few
seconds and needs neither Slurm nor the recipe's environment (conf_get runs the Python that
runs the tests, which has PyYAML).
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs2" / "speechimp"
UTILS = RECIPE / "utils"
RUN_LOCAL = UTILS / "run_local.sh"
RUN_SLURM = UTILS / "run_slurm.sh"


def bash(script: str, *args: str, cwd: Path | None = None, env: dict | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a bash snippet (strict mode) with positional arguments."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script, "snippet", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: float = 30):
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------
# parse_options.sh
# --------------------------------------------------------------------------------------

OPTS_SCRIPT = f"""
stage=1
stop_stage=100
use_lora=false
train_args=
name=plain
help_message="Usage: demo.sh [options] <dir>
  --stage N   first stage"
. {shlex.quote(str(UTILS / "parse_options.sh"))}
printf 'stage=%s\\n' "$stage"
printf 'stop_stage=%s\\n' "$stop_stage"
printf 'use_lora=%s\\n' "$use_lora"
printf 'train_args=%s\\n' "$train_args"
printf 'name=%s\\n' "$name"
printf 'nargs=%s\\n' "$#"
for a in "$@"; do printf 'arg=%s\\n' "$a"; done
"""


def parse(*args: str) -> tuple[int, dict, list, str]:
    p = bash(OPTS_SCRIPT, *args)
    values, positional = {}, []
    for line in p.stdout.splitlines():
        key, _, val = line.partition("=")
        if key == "arg":
            positional.append(val)
        elif key in {"stage", "stop_stage", "use_lora", "train_args", "name", "nargs"}:
            values[key] = val
    return p.returncode, values, positional, p.stdout + p.stderr


def test_parse_options_known_options_both_forms():
    rc, v, pos, _ = parse("--stage", "3", "--stop_stage=5")
    assert rc == 0
    assert v["stage"] == "3" and v["stop_stage"] == "5"
    assert pos == []


def test_parse_options_dash_and_underscore_are_equivalent():
    rc, v, _, _ = parse("--stop-stage", "4")
    assert rc == 0 and v["stop_stage"] == "4"
    rc, v, _, _ = parse("--stop-stage=6")
    assert rc == 0 and v["stop_stage"] == "6"


def test_parse_options_unknown_option_is_named():
    rc, _, _, out = parse("--stgae", "3")
    assert rc == 1
    assert "--stgae" in out and "unknown option" in out


def test_parse_options_missing_value():
    rc, _, _, out = parse("--stage")
    assert rc == 1
    assert "--stage" in out and "needs a value" in out


def test_parse_options_boolean_validation():
    rc, v, _, _ = parse("--use_lora", "true")
    assert rc == 0 and v["use_lora"] == "true"
    rc, _, _, out = parse("--use_lora", "yes")
    assert rc == 1 and "true or false" in out
    rc, _, _, out = parse("--use-lora=1")
    assert rc == 1 and "true or false" in out
    # a non-boolean default takes any value
    rc, v, _, _ = parse("--name", "yes")
    assert rc == 0 and v["name"] == "yes"


def test_parse_options_help_prints_help_message_and_exits_0():
    rc, v, _, out = parse("--stage", "2", "--help", "--bogus")
    assert rc == 0
    assert "Usage: demo.sh [options] <dir>" in out
    assert "--stage N   first stage" in out
    assert "stage=" not in out  # the script stopped at --help


def test_parse_options_positional_arguments_remain():
    rc, v, pos, _ = parse("--stage", "2", "data/train", "--stop_stage", "9", "with space")
    assert rc == 0
    assert v["stage"] == "2" and v["stop_stage"] == "100"  # parsing stops at data/train
    assert pos == ["data/train", "--stop_stage", "9", "with space"]
    rc, v, pos, _ = parse("--", "--stage", "7")
    assert rc == 0 and v["stage"] == "1" and pos == ["--stage", "7"]


def test_parse_options_values_with_spaces_dashes_and_equals():
    rc, v, _, _ = parse("--train_args", "--max_epoch 3 --lr=1e-4", "--name=a=b 'c'")
    assert rc == 0
    assert v["train_args"] == "--max_epoch 3 --lr=1e-4"
    assert v["name"] == "a=b 'c'"


def test_parse_options_config_file(tmp_path):
    cfg = tmp_path / "run.cfg"
    cfg.write_text("# defaults\nstage=4\nstop_stage=\"8\"  # comment\n")
    # the command line wins over the config, whatever the order
    rc, v, _, _ = parse("--stage", "2", "--config", str(cfg))
    assert rc == 0 and v["stage"] == "2" and v["stop_stage"] == "8"
    bad = tmp_path / "bad.cfg"
    bad.write_text("stagee=4\n")
    rc, _, _, out = parse(f"--config={bad}")
    assert rc == 1 and "stagee" in out


def test_parse_options_inside_function_does_not_clobber_helpers():
    # locals of the caller named like common helper words must still be set
    script = f"""
    f() {{
      local name=a value=b opt=c
      . {shlex.quote(str(UTILS / "parse_options.sh"))}
      echo "$name $value $opt $#"
    }}
    f --name x --value y --opt=z rest
    """
    p = bash(script)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "x y z 1"


# --------------------------------------------------------------------------------------
# run_local.sh
# --------------------------------------------------------------------------------------

def read_log(path: Path) -> str:
    assert path.is_file(), f"missing log {path}"
    return path.read_text()


def check_header_footer(text: str, code: int) -> None:
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    assert lines[1].startswith("# Started at ")
    assert re.search(r"^# Accounting: time=\d+ threads=\d+$", text, re.M), text
    assert re.search(rf"^# Ended \(code {code}\) at .*, elapsed time \d+ seconds$", text, re.M), text


def test_run_local_parallel_jobs_with_per_job_logs(tmp_path):
    # Each job waits until all three have started: this only succeeds if they run in
    # parallel (a serial run would time out in job 1).
    body = ("touch started.JOB; for _ in $(seq 100); do "
            "[ -e started.1 ] && [ -e started.2 ] && [ -e started.3 ] && break; sleep 0.05; done; "
            "[ -e started.1 ] && [ -e started.2 ] && [ -e started.3 ]; echo job JOB done")
    p = run([RUN_LOCAL, "--max_jobs_run", "3", "JOB=1:3", "exp/log/deep/t.JOB.log",
             "bash", "-c", body], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for i in (1, 2, 3):
        text = read_log(tmp_path / f"exp/log/deep/t.{i}.log")
        assert f"job {i} done" in text
        assert f"started.{i}" in text.splitlines()[0]  # JOB substituted in the command
        check_header_footer(text, 0)


def test_run_local_max_jobs_run_bounds_parallelism(tmp_path):
    body = "mkdir running || exit 7; sleep 0.1; rmdir running"
    p = run([RUN_LOCAL, "--max-jobs-run=1", "JOB=1:3", "log/s.JOB.log", "bash", "-c", body],
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr + "".join(
        (tmp_path / f"log/s.{i}.log").read_text() for i in (1, 2, 3))


def test_run_local_failing_job(tmp_path):
    p = run([RUN_LOCAL, "JOB=1:3", "log/f.JOB.log", "bash", "-c", "echo out JOB; [ JOB != 2 ] || exit 3"],
            cwd=tmp_path)
    assert p.returncode != 0
    assert "log/f.2.log" in p.stderr
    assert "log/f.1.log" not in p.stderr
    check_header_footer(read_log(tmp_path / "log/f.2.log"), 3)
    check_header_footer(read_log(tmp_path / "log/f.1.log"), 0)
    check_header_footer(read_log(tmp_path / "log/f.3.log"), 0)


def test_run_local_single_job_without_job_range(tmp_path):
    p = run([RUN_LOCAL, "one/x.log", "false"], cwd=tmp_path)
    assert p.returncode != 0 and "one/x.log" in p.stderr
    check_header_footer(read_log(tmp_path / "one/x.log"), 1)


def test_run_local_quoting_is_preserved(tmp_path):
    tricky = ["a  b", "it's", 'say "hi"', "$HOME", "", "`date`", "x;y", "*"]
    script = tmp_path / "show.sh"
    script.write_text('for a in "$@"; do printf "<%s>\\n" "$a"; done\n')
    p = run([RUN_LOCAL, "q.log", "bash", script, *tricky], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    text = read_log(tmp_path / "q.log")
    body = [ln for ln in text.splitlines() if ln.startswith("<")]
    assert body == [f"<{a}>" for a in tricky]


def test_run_local_operator_tokens_build_pipelines(tmp_path):
    p = run([RUN_LOCAL, "JOB=1:2", "p.JOB.log", "echo", "hello JOB", "|", "tr", "a-z", "A-Z",
             ">", "out.JOB.txt"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out.2.txt").read_text() == "HELLO 2\n"


def test_run_local_num_threads_and_unknown_option(tmp_path):
    p = run([RUN_LOCAL, "--num_threads", "3", "--gpu", "1", "--mem", "4G", "--time", "1:00:00",
             "t.log", "bash", "-c", "echo omp=$OMP_NUM_THREADS"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    text = read_log(tmp_path / "t.log")
    assert "omp=3" in text and "threads=3" in text
    p = run([RUN_LOCAL, "--bogus", "1", "t.log", "true"], cwd=tmp_path)
    assert p.returncode != 0 and "--bogus" in p.stderr


PY_FAILURE = ("echo loading; echo 'Traceback (most recent call last):' >&2; "
              "echo '  File \"train.py\", line 3, in <module>' >&2; "
              "echo \"ValueError: conf/train_full.yaml: unknown key 'optim_cnf'\" >&2; exit 1")


def test_run_local_failing_job_shows_the_exception_line(tmp_path):
    p = run([RUN_LOCAL, "exp/full/train.log", "bash", "-c", PY_FAILURE], cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.endswith("run_local.sh: job 1 failed (1 / 1); see log exp/full/train.log\n"
                             "  ValueError: conf/train_full.yaml: unknown key 'optim_cnf'\n"), p.stderr
    assert "File" not in p.stderr and "loading" not in p.stderr


def test_run_local_failing_job_without_exception_shows_its_last_lines(tmp_path):
    p = run([RUN_LOCAL, "x.log", "bash", "-c", "echo a; echo b; echo; echo '  c'; echo d; exit 2"],
            cwd=tmp_path)
    assert p.returncode == 1
    # the last 3 non-empty lines of the job's output, not the launcher's "# ..." footer
    assert p.stderr.endswith("see log x.log\n  b\n    c\n  d\n"), p.stderr
    p = run([RUN_LOCAL, "quiet.log", "false"], cwd=tmp_path)  # no output: the log line alone
    assert p.returncode == 1 and p.stderr == "run_local.sh: job 1 failed (1 / 1); see log quiet.log\n"


def test_run_local_failing_torchrun_job_shows_the_worker_error(tmp_path):
    body = ("[ JOB = 1 ] && exit 0; echo '[rank0]: Traceback (most recent call last):'; "
            "echo '[rank0]: torch.OutOfMemoryError: CUDA out of memory (job JOB)'; "
            "echo 'Traceback (most recent call last):'; "
            "echo 'torch.distributed.elastic.multiprocessing.errors.ChildFailedError: '; echo ====; exit 1")
    p = run([RUN_LOCAL, "JOB=1:3", "log/t.JOB.log", "bash", "-c", body], cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.endswith("2 / 3 jobs failed; e.g. see log log/t.2.log\n"
                             "  [rank0]: torch.OutOfMemoryError: CUDA out of memory (job 2)\n"), p.stderr


def test_die_failed_with_a_missing_or_empty_log(tmp_path):
    lib = shlex.quote(str(UTILS / "launcher_lib.sh"))
    script = f". {lib}\njobvar= first=1 last=2 failed=(2) logspec=$1\ndie_failed"
    p = bash(script, "gone/x.log", cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr == "snippet: job 2 failed (1 / 2); see log gone/x.log\n  (no log gone/x.log)\n"
    (tmp_path / "empty.log").write_text("")
    p = bash(script, "empty.log", cwd=tmp_path)
    assert p.returncode == 1 and p.stderr == "snippet: job 2 failed (1 / 2); see log empty.log\n"


# --------------------------------------------------------------------------------------
# run_slurm.sh with a fake sbatch
# --------------------------------------------------------------------------------------

FAKE_SBATCH = r"""#!/usr/bin/env bash
# fake sbatch: records its arguments, then runs the job script here, task by task
printf '%s\n' "$*" >> "$(dirname "$0")/sbatch.calls"
array=
for a in "$@"; do case $a in --array=*) array=${a#--array=} ;; esac; done
script=${!#}
echo "Submitted batch job 4242"
rc=0
if [ -n "$array" ]; then
  range=${array%%%*}
  for ((t = ${range%-*}; t <= ${range#*-}; t++)); do
    c=0
    SLURM_JOB_ID=4242 SLURM_ARRAY_JOB_ID=4242 SLURM_ARRAY_TASK_ID=$t bash "$script" || c=$?
    ((c > rc)) && rc=$c
  done
else
  SLURM_JOB_ID=4242 bash "$script" || rc=$?
fi
exit $rc
"""


@pytest.fixture
def fake_sbatch(tmp_path):
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    sb = bindir / "sbatch"
    sb.write_text(FAKE_SBATCH)
    sb.chmod(sb.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, bindir / "sbatch.calls"


def test_run_slurm_same_logs_and_exit_code(tmp_path, fake_sbatch):
    env, calls = fake_sbatch
    work = tmp_path / "w"
    work.mkdir()
    cmd = ["JOB=1:3", "exp/log/s.JOB.log", "bash", "-c",
           'echo "job JOB \\"quoted\\" omp=$OMP_NUM_THREADS"; [ JOB != 3 ] || exit 4']
    p = run([RUN_SLURM, "--num_threads", "2", "--gpu", "1", "--mem", "4G", "--time", "2:00:00",
             "--max_jobs_run", "2", "--partition", "gpu", *cmd], cwd=work, env=env)
    assert p.returncode != 0
    assert "exp/log/s.3.log" in p.stderr
    for i, code in ((1, 0), (2, 0), (3, 4)):
        text = read_log(work / f"exp/log/s.{i}.log")
        check_header_footer(text, code)
        assert f'job {i} "quoted" omp=2' in text
    args = calls.read_text()
    for opt in ("--wait", "--cpus-per-task=2", "--gres=gpu:1", "--mem=4G", "--time=2:00:00",
                "--array=1-3%2", "--partition=gpu"):
        assert opt in args, args

    # the same command through run_local.sh gives the same log bodies and exit status
    local = tmp_path / "l"
    local.mkdir()
    q = run([RUN_LOCAL, "--num_threads", "2", *cmd], cwd=local)
    assert q.returncode == p.returncode
    strip = lambda t: [ln for ln in t.splitlines() if not ln.startswith("#")]  # noqa: E731
    for i in (1, 2, 3):
        assert strip(read_log(local / f"exp/log/s.{i}.log")) == strip(read_log(work / f"exp/log/s.{i}.log"))
        assert read_log(local / f"exp/log/s.{i}.log").splitlines()[0] == \
            read_log(work / f"exp/log/s.{i}.log").splitlines()[0]


def test_run_slurm_single_job_success(tmp_path, fake_sbatch):
    env, calls = fake_sbatch
    p = run([RUN_SLURM, "one.log", "echo", "a  b", ">", "out.txt"], cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    check_header_footer(read_log(tmp_path / "one.log"), 0)
    assert (tmp_path / "out.txt").read_text() == "a  b\n"
    assert "--array" not in calls.read_text()


def test_run_slurm_failing_job_shows_the_exception_line(tmp_path, fake_sbatch):
    env, _ = fake_sbatch
    p = run([RUN_SLURM, "exp/full/train.log", "bash", "-c", PY_FAILURE], cwd=tmp_path, env=env)
    assert p.returncode == 1
    assert p.stderr.endswith("see log exp/full/train.log\n"
                             "  ValueError: conf/train_full.yaml: unknown key 'optim_cnf'\n"), p.stderr


def test_run_slurm_without_sbatch_fails_clearly(tmp_path):
    p = run([RUN_SLURM, "x.log", "true"], cwd=tmp_path, env={"SBATCH": "no-such-sbatch-here"})
    assert p.returncode != 0 and "no-such-sbatch-here" in p.stderr


# --------------------------------------------------------------------------------------
# log.sh
# --------------------------------------------------------------------------------------

LOG_SH = shlex.quote(str(UTILS / "log.sh"))


def test_log_and_stage_header_format():
    p = bash(f'. {LOG_SH}\nlog "hello there"\nstage_header 3 "data/train -> exp/importance/base"')
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d \(snippet:\d+:main\) hello there$", lines[0]), lines
    assert "Stage 3: data/train -> exp/importance/base" in lines[1]


def test_time_stage_tsv(tmp_path):
    tsv = tmp_path / "exp" / "stage_times.tsv"
    script = f"""
    . {LOG_SH}
    tsv={shlex.quote(str(tsv))}
    s2() {{ sleep 1.0; }}
    time_stage "$tsv" 2 s2
    time_stage "$tsv" 1 true
    time_stage_begin 3; sleep 0.1; time_stage_end "$tsv" 3
    time_stage "$tsv" 2 true          # a re-run replaces stage 2's time, in place
    """
    p = bash(script)
    assert p.returncode == 0, p.stderr
    rows = [ln.split("\t") for ln in tsv.read_text().splitlines()]
    assert [r[0] for r in rows] == ["2", "1", "3"]
    secs = {r[0]: float(r[1]) for r in rows}
    assert all(len(r) == 2 for r in rows)
    assert secs["2"] < 1.0  # the re-run's time, not the first one's (>= 1 s)
    assert 0.1 <= secs["3"] < 5
    assert not list(tsv.parent.glob("*.tmp.*"))  # no temporary files left


def test_time_stage_failure_is_not_recorded_and_stops_set_e(tmp_path):
    tsv = tmp_path / "t.tsv"
    script = f"""
    . {LOG_SH}
    s4() {{ false; echo NOT_REACHED; }}
    time_stage {shlex.quote(str(tsv))} 4 s4
    echo AFTER
    """
    p = bash(script)
    assert p.returncode != 0
    assert "NOT_REACHED" not in p.stdout and "AFTER" not in p.stdout
    assert not tsv.exists() or "4\t" not in tsv.read_text()


def test_record_stage_time_parallel_writers(tmp_path):
    tsv = tmp_path / "p.tsv"
    script = f"""
    . {LOG_SH}
    for i in $(seq 1 12); do record_stage_time {shlex.quote(str(tsv))} "s$i" "$i.0" & done
    wait
    """
    p = bash(script)
    assert p.returncode == 0, p.stderr
    rows = dict(ln.split("\t") for ln in tsv.read_text().splitlines())
    assert rows == {f"s{i}": f"{i}.0" for i in range(1, 13)}


def test_run_local_empty_max_jobs_run_means_nproc_and_bad_values_are_named(tmp_path):
    p = run([RUN_LOCAL, "--max_jobs_run", "", "t.log", "true"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for launcher in (RUN_LOCAL, RUN_SLURM):
        for opt, val in (("--num_threads", "0"), ("--gpu", "x"), ("--max_jobs_run", "-1")):
            p = run([launcher, opt, val, "t.log", "true"], cwd=tmp_path)
            assert p.returncode == 1 and opt in p.stderr and launcher.name in p.stderr, p.stderr


def test_launchers_help_is_their_header_comment():
    for launcher in (RUN_LOCAL, RUN_SLURM):
        p = run([launcher, "--help"], cwd=UTILS)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith(f"utils/{launcher.name} — ")
        assert "--num_threads N" in p.stdout and "set -euo" not in p.stdout and "\n# " not in p.stdout


# --------------------------------------------------------------------------------------
# conf_get.sh
# --------------------------------------------------------------------------------------

CONF_GET = shlex.quote(str(UTILS / "conf_get.sh"))
PY_ENV = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def test_conf_get_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("a:\n  b: {c: 5}\n  yes_: true\n  no_: false\n  none: null\n"
                 "lr: 2.0e-04\nname: valid.loss.best.pth\nlist: [1, 2]\n")
    keys = ["a.b.c", "a.yes_", "a.no_", "a.none", "lr", "name"]
    script = f". {CONF_GET}\n" + "".join(f'echo "<$(conf_get {shlex.quote(str(f))} {k})>"\n' for k in keys)
    p = bash(script, env=PY_ENV)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["<5>", "<true>", "<false>", "<>", "<0.0002>", "<valid.loss.best.pth>"]
    # run directly, too
    p = run([UTILS / "conf_get.sh", f, "a.b.c"], cwd=tmp_path, env=PY_ENV)
    assert (p.returncode, p.stdout) == (0, "5\n"), p.stderr


def test_conf_get_errors_name_the_file_and_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("a:\n  b: 1\nlist: [1, 2]\n")
    for key, msg in (("a.c", "no key a.c"), ("a.b.c", "no key a.b.c"), ("nope", "no key nope"),
                     ("a", "a is a mapping, not a single value"), ("list", "list is a list, not a single value")):
        # under set -e the calling script stops at the failing assignment
        p = bash(f". {CONF_GET}\nx=$(conf_get {shlex.quote(str(f))} {key})\necho NOT_REACHED", env=PY_ENV)
        assert p.returncode == 1 and "NOT_REACHED" not in p.stdout, (key, p.stdout)
        assert p.stderr.strip() == f"conf_get: {f}: {msg}", p.stderr
    p = bash(f". {CONF_GET}\nconf_get {shlex.quote(str(tmp_path / 'missing.yaml'))} a", env=PY_ENV)
    assert p.returncode == 1 and "missing.yaml" in p.stderr and "No such file" in p.stderr
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    p = bash(f". {CONF_GET}\nconf_get {shlex.quote(str(tmp_path / 'bad.yaml'))} a", env=PY_ENV)
    assert p.returncode == 1 and "bad.yaml: not valid YAML" in p.stderr
    p = bash(f". {CONF_GET}\nconf_get only_one_argument", env=PY_ENV)
    assert p.returncode == 2 and "usage: conf_get FILE KEY" in p.stderr


def test_conf_get_default_for_a_missing_key_only(tmp_path):
    f = shlex.quote(str(tmp_path / "c.yaml"))
    (tmp_path / "c.yaml").write_text("a:\n  b: true\nnull_map:\nlist: [1]\n")
    p = bash(f". {CONF_GET}\n" + "".join(f'echo "<$(conf_get {f} {k} false)>"\n'
                                          for k in ("a.b", "a.c", "nope", "null_map.x")), env=PY_ENV)
    assert p.returncode == 0 and p.stdout.splitlines() == ["<true>", "<false>", "<false>", "<false>"], p.stderr
    for key, msg in (("a.b.c", "no key a.b.c"), ("list", "list is a list, not a single value")):
        p = bash(f". {CONF_GET}\nx=$(conf_get {f} {key} false)\necho NOT_REACHED", env=PY_ENV)
        assert p.returncode == 1 and p.stderr.strip() == f"conf_get: {tmp_path / 'c.yaml'}: {msg}", p.stderr


# --------------------------------------------------------------------------------------
# help.sh
# --------------------------------------------------------------------------------------

HELP_SCRIPT = """#!/usr/bin/env bash
# demo.sh: what it does.
#
#   ./demo.sh --stage 2
set -euo pipefail
not_an_option=1
# ==== Options ====

# ---- General ------------------------------
stage=1                  # first stage
# a remark under the heading
names="a b"              # several names, which
                         # the comment goes on about
a_very_long_option_name=/some/long/default/value  # meaning
bare=
                         # meaning on the next line only

# ---- Other ----
flag=false               # a boolean
help_message=x
after=1                  # not listed
"""


def test_script_header_and_options_help(tmp_path):
    f = tmp_path / "demo.sh"
    f.write_text(HELP_SCRIPT)
    p = bash(f". {shlex.quote(str(UTILS / 'help.sh'))}\nscript_header {f}; echo ---; options_help {f}")
    assert p.returncode == 0, p.stderr
    col = " " * 30
    assert p.stdout.splitlines() == [
        "demo.sh: what it does.", "", "  ./demo.sh --stage 2", "---",
        "Options (default in brackets):", "",
        "General:",
        "  --stage [1]".ljust(30) + "first stage",
        "  a remark under the heading",
        '  --names ["a b"]'.ljust(30) + "several names, which",
        col + "the comment goes on about",
        "  --a_very_long_option_name [/some/long/default/value]",
        col + "meaning",
        "  --bare []".ljust(30) + "meaning on the next line only",
        "",
        "Other:",
        "  --flag [false]".ljust(30) + "a boolean",
    ]


# --------------------------------------------------------------------------------------
# path.sh, cmd.sh, db.sh
# --------------------------------------------------------------------------------------

def test_path_sh_missing_venv_names_install():
    p = bash(f". {shlex.quote(str(RECIPE / 'path.sh'))}\necho SHOULD_NOT_PRINT",
             env={"SPEECHIMP_VENV": "/nonexistent/venv"})
    assert p.returncode != 0
    assert "tools/install.sh" in p.stderr and "make install" in p.stderr
    assert "SHOULD_NOT_PRINT" not in p.stdout


def test_path_sh_environment(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text("#!/bin/sh\n")
    py.chmod(0o755)
    (venv / ".speechimp-installed").write_text("x\n")
    env = {"SPEECHIMP_VENV": str(venv), "PYTHONPATH": "/elsewhere"}
    script = (f"unset OMP_NUM_THREADS\n. {shlex.quote(str(RECIPE / 'path.sh'))}\n"
              'for v in VIRTUAL_ENV PYTHONPATH PYTHONUNBUFFERED HF_HUB_OFFLINE TRANSFORMERS_OFFLINE '
              'HF_DATASETS_OFFLINE TOKENIZERS_PARALLELISM OMP_NUM_THREADS SPEECHIMP_ROOT; do '
              'printf "%s=%s\\n" "$v" "${!v}"; done; command -v python')
    p = bash(script, env=env)
    assert p.returncode == 0, p.stderr
    out = dict(ln.split("=", 1) for ln in p.stdout.splitlines() if "=" in ln)
    assert out["VIRTUAL_ENV"] == str(venv)
    assert out["PYTHONPATH"] == f"{ROOT}:/elsewhere"
    assert out["SPEECHIMP_ROOT"] == str(ROOT)
    assert (out["PYTHONUNBUFFERED"], out["HF_HUB_OFFLINE"], out["TRANSFORMERS_OFFLINE"],
            out["HF_DATASETS_OFFLINE"], out["TOKENIZERS_PARALLELISM"]) == ("1", "1", "1", "1", "false")
    # nproc itself honours OMP_NUM_THREADS (as the tests are run with OMP_NUM_THREADS=1)
    plain = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, env=plain).stdout.strip()
    assert out["OMP_NUM_THREADS"] == nproc
    assert p.stdout.strip().splitlines()[-1] == str(py)


def test_cmd_sh_backends():
    cmd_sh = shlex.quote(str(RECIPE / "cmd.sh"))
    p = bash(f'. {cmd_sh}\necho "$train_cmd|$decode_cmd|$cuda_cmd"', env={"cmd_backend": "local"})
    assert p.returncode == 0, p.stderr
    assert all(c.startswith("utils/run_local.sh") for c in p.stdout.strip().split("|"))
    p = bash(f'. {cmd_sh}\necho "$train_cmd|$cuda_cmd"',
             env={"cmd_backend": "slurm", "slurm_gpu_partition": "gpu"})
    assert p.returncode == 0, p.stderr
    train, cuda = p.stdout.strip().split("|")
    assert train.startswith("utils/run_slurm.sh") and "--gpu 1" in cuda and "--partition gpu" in cuda
    p = bash(f". {cmd_sh}", env={"cmd_backend": "pbs"})
    assert p.returncode != 0 and "pbs" in p.stderr


def test_db_sh_defaults_and_overrides():
    db_sh = shlex.quote(str(RECIPE / "db.sh"))
    names = ["VOICEASSISTANT_400K", "SPOKEN_ALPACA_GPT4", "LLAMA_QUESTIONS", "SPOKEN_WEB_QUESTIONS"]
    show = "; ".join(f'echo "{n}=${{{n}}}"' for n in names)
    env = {n: "" for n in names}
    env["LLAMA_QUESTIONS"] = "/data/lq"
    p = bash(f"unset VOICEASSISTANT_400K SPOKEN_ALPACA_GPT4 SPOKEN_WEB_QUESTIONS\n. {db_sh}\n{show}", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["VOICEASSISTANT_400K=", "SPOKEN_ALPACA_GPT4=",
                                "LLAMA_QUESTIONS=/data/lq", "SPOKEN_WEB_QUESTIONS="]
