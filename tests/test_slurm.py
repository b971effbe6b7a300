"""SLURM without flags (gptkit/train/slurm.py): the hostlist syntax and the launch settings derived
from the variables srun and sbatch set. The trainings it drives are in test_train_dist.py."""

import pytest
from conftest import assert_one_line_error, run_cli

from gptkit.errors import GptkitError
from gptkit.train.slurm import PORT_BASE, PORT_SPAN, derive, expand_hostlist

# Each form of SLURM's documentation (scontrol show hostnames; "HOSTLIST EXPRESSION" in the man pages).
FORMS = {
    "node01": ["node01"],
    "node[01-04,07]": ["node01", "node02", "node03", "node04", "node07"],
    "gpu-a[1-2],gpu-b3": ["gpu-a1", "gpu-a2", "gpu-b3"],
    "rack[1-2]-n[01-02]": ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"],
    "n[8-11]": ["n8", "n9", "n10", "n11"],
    "n[098-101]": ["n098", "n099", "n100", "n101"],  # the width of the first number kept
    "a[1,3],b,c[5-6]": ["a1", "a3", "b", "c5", "c6"],
    "127.0.0.[1-2]": ["127.0.0.1", "127.0.0.2"],
    "[1-2]x": ["1x", "2x"],
}


@pytest.mark.parametrize("text", FORMS)
def test_hostlist_forms(text):
    assert expand_hostlist(text) == FORMS[text]


@pytest.mark.parametrize("text", ["node[1-", "node1]", "node[a-b]", "node[3-1]", "a,,b", "", "n[1-2]]"])
def test_a_hostlist_it_cannot_read_is_one_line(text):
    with pytest.raises(GptkitError, match="cannot read the SLURM host list"):
        expand_hostlist(text)


STEP = {  # what srun sets on the second node of `srun -N2 --ntasks-per-node 1` in job 123456
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NUM_NODES": "4",
    "SLURM_JOB_NODELIST": "gpu[01-04]",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NODELIST": "gpu[03-04]",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_NODEID": "1",
    "SLURM_GPUS_ON_NODE": "8",
}


def test_an_srun_step_gives_the_node_settings():
    c = derive(STEP, {})
    assert c.values == {
        "nodes": 2,
        "node_rank": 1,
        "master_addr": "gpu03",  # the step's first host, not the job's
        "master_port": PORT_BASE + 123456 % PORT_SPAN,
        "gpus": 8,
        "max_restarts": 3,
    }
    assert not 32768 <= c.values["master_port"] <= 60999  # outside Linux's ephemeral range
    assert c.taken["nodes"] == "SLURM_STEP_NUM_NODES" and "SLURM_STEP_NODELIST" in c.taken["master_addr"]
    line = c.line()
    assert line.startswith("from SLURM (job 123456): ") and "nodes 2 (SLURM_STEP_NUM_NODES)" in line


def test_srun_n1_in_a_two_node_allocation_trains_on_one_node():
    env = {**STEP, "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NODELIST": "gpu03", "SLURM_STEP_NUM_TASKS": "1"}
    env["SLURM_NODEID"] = "0"
    c = derive(env, {})
    assert c.values["nodes"] == 1 and "master_port" not in c.values  # one node: --standalone


def test_outside_slurm_nothing_and_a_one_node_batch_script_is_one_node():
    assert derive({"CUDA_VISIBLE_DEVICES": "0,1"}, {}) is None
    job = {
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "gpu01",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    c = derive(job, {})
    assert c.values["nodes"] == 1 and c.values["gpus"] == 2 and c.taken["gpus"] == "CUDA_VISIBLE_DEVICES"


def test_explicit_flags_win():
    c = derive(STEP, {"master_addr": "10.0.0.5", "master_port": 29500, "gpus": 4, "max_restarts": 0, "nodes": 2})
    assert c.values == {"node_rank": 1}  # the others were given; --nodes 2 agrees with SLURM
    assert "master_addr" not in c.taken


@pytest.mark.parametrize(
    "env, given, message",
    [
        (STEP, {"nodes": 4}, "--nodes 4 but SLURM says 2"),
        (STEP, {"node_rank": 0}, "--node-rank 0 but SLURM says 1"),
        ({**STEP, "SLURM_STEP_NUM_TASKS": "16"}, {}, "srun started 16 tasks on 2 node(s)"),
        (
            {k: v for k, v in STEP.items() if not k.startswith("SLURM_STEP")},
            {},
            "not an srun step",
        ),
        ({**STEP, "SLURM_STEP_NODELIST": "gpu[01-03]"}, {}, "names 3 hosts: SLURM's variables contradict"),
        ({**STEP, "SLURM_NODEID": "2"}, {}, "SLURM_NODEID=2 is not below"),
        ({**STEP, "SLURM_STEP_NODELIST": "gpu[01-"}, {}, "cannot read the SLURM host list"),
        ({**STEP, "SLURM_GPUS_ON_NODE": "eight"}, {}, "not a number"),
    ],
)
def test_slurm_mismatches_are_one_line(env, given, message):
    with pytest.raises(GptkitError, match="^[^\n]*$") as e:
        derive(env, given)
    assert message in str(e.value)


def test_train_under_slurm_says_what_it_took(gptkit_home, tmp_path):
    from test_train_data import make_dataset

    data = make_dataset(tmp_path / "shards")
    env = {**STEP, "SLURM_GPUS_ON_NODE": "0", "SLURM_STEP_NODELIST": "127.0.0.[1-2]"}
    r = run_cli("train", "--dry-run", "--preset", "tiny", "--data", data, "--name", "s", env=env)
    assert r.returncode == 0, r.stderr
    first, cmd = r.stdout.splitlines()[:2]
    assert first.startswith("from SLURM (job 123456): nodes 2 (SLURM_STEP_NUM_NODES), node-rank 1 (SLURM_NODEID)")
    port = PORT_BASE + 123456 % PORT_SPAN
    assert f"--nnodes 2 --node-rank 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:{port}" in cmd
    assert "--max-restarts 3" in cmd
    line = assert_one_line_error(run_cli("train", "--dry-run", "--preset", "tiny", "--nodes", "3", env=env))
    assert "--nodes 3 but SLURM says 2" in line


def test_the_batch_script_takes_partition_account_time_from_flags_or_sbatch_variables():
    from gptkit.train.slurm import batch_script

    args = ["--gpus", "8", "--nodes", "4", "--master-port", "29500", "--name", "r", "--sbatch", "-", "--partition=p1"]
    common = dict(nodes=4, gpus=8, name="r", out=None, account=None, time=None, python="/venv/bin/python")
    s = batch_script(args, partition="p1", env={"SBATCH_ACCOUNT": "acct", "GPTKIT_HOME": "/shared/gk"}, **common)
    head = [ln for ln in s.splitlines() if ln.startswith("#SBATCH")]
    assert head == [
        "#SBATCH --job-name=r",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=p1",
        "#SBATCH --account=acct",
        "#SBATCH --requeue",
        "#SBATCH --signal=TERM@120",
    ]  # no time given: no line (never guessed)
    assert "export GPTKIT_HOME=/shared/gk" in s
    assert s.splitlines()[-1] == (
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 /venv/bin/python -m gptkit train --gpus 8 --name r --resume auto"
    )
    with pytest.raises(GptkitError, match="--sbatch writes a multi-node job"):
        batch_script(args, partition=None, env={}, **{**common, "nodes": 1})
    with pytest.raises(GptkitError, match="--sbatch needs --name or --out"):
        batch_script(args, partition=None, env={}, **{**common, "name": None})


def test_a_config_another_node_of_the_same_start_wrote_is_no_restart(gptkit_home, tmp_path):
    """Every node's `gptkit train --resume auto` writes RUN/config.json; a node that resolves after
    another wrote it takes it without calling it a restart. A requeue (SLURM_RESTART_COUNT) is one."""
    import json

    from test_train_data import make_dataset

    from gptkit import paths

    data = make_dataset(tmp_path / "shards")
    env = {**STEP, "SLURM_GPUS_ON_NODE": "0", "SLURM_STEP_NODELIST": "127.0.0.[1-2]"}
    flags = ["train", "--dry-run", "--preset", "tiny", "--data", data, "--name", "s", "--resume", "auto"]
    first = run_cli(*flags, env=env, check=True)
    assert "no checkpoint yet" not in first.stdout  # a run not started yet: a new one
    resolved = json.loads(first.stdout[first.stdout.index("{") :])
    assert resolved["slurm"]["start"] == "123456.0"
    run = paths.runs_dir("s")
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(resolved))  # as the other node's launcher wrote it
    sibling = run_cli(*flags, env={**env, "SLURM_NODEID": "0"}, check=True)
    assert "no checkpoint yet" not in sibling.stdout, sibling.stdout
    requeued = run_cli(*flags, env={**env, "SLURM_RESTART_COUNT": "1"}, check=True)
    assert f"{run} has no checkpoint yet: restarting it from step 0" in requeued.stdout, requeued.stdout
