"""SLURM without flags: what `--nodes/--node-rank/--master-addr/--master-port/--gpus` give, read
from the variables srun (or sbatch) sets. `gptkit train` and `gptkit doctor --dist` both call
`derive`; `expand_hostlist` is SLURM's hostlist syntax, parsed here so no `scontrol` is needed.

    inside an srun step:  SLURM_STEP_NUM_NODES, SLURM_STEP_NODELIST, SLURM_NODEID, SLURM_STEP_NUM_TASKS
    else (the job's):     SLURM_JOB_NUM_NODES, SLURM_JOB_NODELIST (one node only: see derive)
    GPUs:                 SLURM_GPUS_ON_NODE, else the count of CUDA_VISIBLE_DEVICES

The step's variables come first, so `srun -N1` inside a 2-node allocation trains on one node.
One process per node: gptkit starts torchrun, which starts the workers of the node's GPUs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gptkit.errors import GptkitError

# A port from the job id, below Linux's ephemeral range (32768-60999, net.ipv4.ip_local_port_range),
# where the kernel hands out the ports of outgoing connections, and above the registered services
# most clusters run: two jobs sharing a node get different ports unless their ids are 10,000 apart.
PORT_BASE, PORT_SPAN = 20000, 10000
RESTARTS_UNDER_SLURM = 3  # --max-restarts when SLURM started the run and none was given

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def expand_hostlist(text: str) -> list[str]:
    """SLURM's hostlist syntax -> host names, in SLURM's order: `node[01-03,07]` -> node01, node02,
    node03, node07 (the zero padding of each range's first number kept); `gpu-a[1-2],gpu-b3`;
    several brackets in one name multiply out, the leftmost slowest: `rack[1-2]-n[01-02]` -> rack1-n01,
    rack1-n02, rack2-n01, rack2-n02. A list it cannot parse is one line."""

    def bad(why: str) -> GptkitError:
        return GptkitError(f"cannot read the SLURM host list {text!r}: {why}")

    hosts: list[str] = []
    for name in _split_top(text.strip(), bad):
        parts: list[list[str]] = []  # each piece of the name: its choices
        rest = name
        while rest:
            if "[" not in rest:
                if "]" in rest:
                    raise bad("a ']' without its '['")
                parts.append([rest])
                break
            head, _, tail = rest.partition("[")
            body, close, rest = tail.partition("]")
            if not close or "[" in body:
                raise bad("a '[' without its ']'")
            parts.append([head] if head else [""])
            parts.append(_expand_ranges(body, bad))
        names = [""]
        for choices in parts:
            names = [n + c for n in names for c in choices]
        hosts += names
    if not hosts:
        raise bad("no host in it")
    return hosts


def _split_top(text: str, bad) -> list[str]:
    """Split at the commas outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise bad("a ']' without its '['")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise bad("a '[' without its ']'")
    out.append(cur)
    if any(not s.strip() for s in out):
        raise bad("an empty name")
    return [s.strip() for s in out]


def _expand_ranges(body: str, bad) -> list[str]:
    out: list[str] = []
    for item in body.split(","):
        m = _RANGE.fullmatch(item.strip())
        if m is None:
            raise bad(f"[{body}] is not a list of numbers and ranges")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise bad(f"the range {item} runs backwards")
        width = len(lo) if lo.startswith("0") else 0
        out += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return out


@dataclass
class Cluster:
    """What SLURM says about this node's part of the run. `values`: the LaunchConfig settings taken
    from it (those not given by a flag or the config file); `taken`: each one's variable."""

    values: dict = field(default_factory=dict)
    taken: dict = field(default_factory=dict)
    job_id: str = ""
    # The job and its requeue count (SLURM_RESTART_COUNT): the same on every node of one start, so a
    # config.json another node of this start wrote is no restart (see resolve.resolve_run).
    start: str = ""

    def line(self) -> str:
        """For the run header: `from SLURM (job 123): nodes 2 (SLURM_STEP_NUM_NODES), ...`."""
        parts = [f"{k.replace('_', '-')} {self.values[k]} ({v})" for k, v in self.taken.items()]
        return f"from SLURM (job {self.job_id}): " + (", ".join(parts) if parts else "nothing (all given as flags)")


def _int(env: Mapping[str, str], key: str) -> int | None:
    v = env.get(key)
    if v is None or v == "":
        return None
    # SLURM writes some counts as "2(x3)" (per-node lists); a single node's value is the number.
    m = re.fullmatch(r"\s*(\d+)(?:\(x\d+\))?\s*", v)
    if m is None:
        raise GptkitError(f"{key}={v!r}: not a number (SLURM's variables contradict each other or were edited)")
    return int(m.group(1))


def in_slurm(env: Mapping[str, str]) -> bool:
    return bool(env.get("SLURM_JOB_ID"))


def job_port(job_id: str) -> int:
    try:
        return PORT_BASE + int(job_id) % PORT_SPAN
    except ValueError:
        raise GptkitError(f"SLURM_JOB_ID={job_id!r}: not a job number") from None


def derive(env: Mapping[str, str], given: Mapping[str, object]) -> Cluster | None:
    """The launch settings SLURM gives this node, or None outside an allocation (no SLURM_JOB_ID).

    `given`: the LaunchConfig settings given by flags or the config file; they win over SLURM, except
    that a node count or node rank SLURM contradicts is one line (the nodes would never meet)."""
    if not in_slurm(env):
        return None
    job = env["SLURM_JOB_ID"]
    start = f"{job}.{env.get('SLURM_RESTART_COUNT') or 0}"
    step = env.get("SLURM_STEP_NUM_NODES") is not None
    pre = "SLURM_STEP_" if step else "SLURM_JOB_"
    nodes = _int(env, pre + "NUM_NODES")
    nodelist = env.get(pre + "NODELIST")
    if nodes is None and nodelist is None:
        return Cluster(job_id=job, start=start)  # an allocation that says nothing about its nodes: the flags decide
    hosts = expand_hostlist(nodelist) if nodelist else None
    if nodes is None and hosts is not None:
        nodes = len(hosts)
    assert nodes is not None
    if hosts is not None and len(hosts) != nodes:
        raise GptkitError(
            f"{pre}NUM_NODES={nodes} but {pre}NODELIST={nodelist} names {len(hosts)} hosts: SLURM's variables "
            "contradict each other"
        )
    if not step and nodes > 1:
        raise GptkitError(
            f"the SLURM job has {nodes} nodes but this is not an srun step (it runs on the first node only); start "
            "it once per node: `srun --ntasks-per-node 1 gptkit train ...`"
        )
    tasks = _int(env, "SLURM_STEP_NUM_TASKS") if step else None
    if tasks is not None and tasks != nodes:
        raise GptkitError(
            f"srun started {tasks} tasks on {nodes} node(s); gptkit runs one per node (torchrun starts the GPUs' "
            "workers): `srun --ntasks-per-node 1 gptkit train ...`"
        )
    rank = _int(env, "SLURM_NODEID")
    if rank is None:
        rank = 0 if nodes == 1 else None
    if rank is None:
        raise GptkitError("SLURM_NODEID is not set in a multi-node srun step: give --node-rank")
    if not 0 <= rank < nodes:
        raise GptkitError(f"SLURM_NODEID={rank} is not below {pre}NUM_NODES={nodes}: SLURM's variables contradict")

    from_slurm: dict[str, tuple[object, str]] = {
        "nodes": (nodes, pre + "NUM_NODES"),
        "node_rank": (rank, "SLURM_NODEID"),
    }
    if nodes > 1:
        if hosts is None:
            raise GptkitError(f"{pre}NODELIST is not set: give --master-addr")
        from_slurm["master_addr"] = (hosts[0], f"the first host of {pre}NODELIST")
        from_slurm["master_port"] = (job_port(job), "SLURM_JOB_ID")
    gpus = _int(env, "SLURM_GPUS_ON_NODE")
    if gpus is not None:
        from_slurm["gpus"] = (gpus, "SLURM_GPUS_ON_NODE")
    elif env.get("CUDA_VISIBLE_DEVICES"):
        from_slurm["gpus"] = (len(env["CUDA_VISIBLE_DEVICES"].split(",")), "CUDA_VISIBLE_DEVICES")
    from_slurm["max_restarts"] = (RESTARTS_UNDER_SLURM, "SLURM_JOB_ID: restarts on under SLURM")

    flag = {"nodes": "--nodes", "node_rank": "--node-rank"}
    for key in ("nodes", "node_rank"):
        if key in given and given[key] != from_slurm[key][0]:
            value, var = from_slurm[key]
            raise GptkitError(
                f"{flag[key]} {given[key]} but SLURM says {value} ({var}={value}); leave {flag[key]} out under srun, "
                f"or ask srun for that many nodes (`srun -N {given[key]}`)"
                if key == "nodes"
                else f"{flag[key]} {given[key]} but SLURM says {value} ({var}={value}); leave {flag[key]} out under srun"
            )
    out = Cluster(job_id=job, start=start)
    for key, (value, var) in from_slurm.items():
        if key not in given:
            out.values[key] = value
            out.taken[key] = var
    return out


# --- `gptkit train ... --sbatch FILE` --------------------------------------------------------------
# The node flags SLURM gives each node under srun (derive), and the options that only make the script.
_NODE_FLAGS = {"--nodes", "--nnodes", "--node-rank", "--master-addr", "--master-port"}
_SCRIPT_FLAGS = {"--sbatch", "--partition", "--account", "--time", "--resume"}
SIGNAL_MARGIN_S = 120  # SIGTERM this long before the time limit: the workers finish the step and save


def _strip(args: list[str], drop: set[str]) -> list[str]:
    """ARGS without the options in `drop` and their values (`--opt V` or `--opt=V`)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in drop:
            skip = "=" not in a
            continue
        out.append(a)
    return out


def batch_script(
    args: list[str],
    *,
    nodes: int | None,
    gpus: int | None,
    name: str | None,
    out: str | None,
    partition: str | None,
    account: str | None,
    time: str | None,
    env: Mapping[str, str],
    python: str,
) -> str:
    """A complete sbatch script for `gptkit train ARGS` (the command line as typed, --sbatch and
    its companions included): one task per node, `--requeue`, SIGTERM SIGNAL_MARGIN_S before the
    time limit (the graceful stop saves), and `srun ... gptkit train ARGS --resume auto`, so a
    requeued or resubmitted job continues the run. Partition, account and time come from the flags
    or SBATCH_PARTITION / SBATCH_ACCOUNT / SBATCH_TIMELIMIT, else no line: never guessed."""
    import shlex

    if not nodes or nodes < 2:
        raise GptkitError(
            "--sbatch writes a multi-node job: give --nodes N (2 or more); on one node, run "
            "`sbatch --wrap 'gptkit train ...'` or gptkit train inside an allocation"
        )
    if not name and not out:
        raise GptkitError("--sbatch needs --name or --out: a requeued job must find the same run to resume it")
    picked = {
        "partition": partition or env.get("SBATCH_PARTITION"),
        "account": account or env.get("SBATCH_ACCOUNT"),
        "time": time or env.get("SBATCH_TIMELIMIT"),
    }
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name or out}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",  # one gptkit per node: torchrun starts the GPUs' workers
    ]
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    lines += [f"#SBATCH --{k}={v}" for k, v in picked.items() if v]
    lines += [
        "#SBATCH --requeue",
        f"#SBATCH --signal=TERM@{SIGNAL_MARGIN_S}",
        "",
        "# Written by `gptkit train --sbatch`. Every node runs one `gptkit train`; SLURM's variables give",
        "# it --nodes, --node-rank, the rendezvous host and port, and --max-restarts 3 (`gptkit train --help`).",
        "# --resume auto: a requeued or resubmitted job continues the run from its newest checkpoint.",
        "set -euo pipefail",
    ]
    for k in ("GPTKIT_HOME", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        if env.get(k):
            lines.append(f"export {k}={shlex.quote(env[k])}")
    keep = _strip(args, _NODE_FLAGS | _SCRIPT_FLAGS)
    cmd = [python, "-m", "gptkit", "train", *keep, "--resume", "auto"]
    lines.append("srun --ntasks-per-node=1 --kill-on-bad-exit=1 " + shlex.join(cmd))
    return "\n".join(lines) + "\n"
