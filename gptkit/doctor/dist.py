"""`gptkit doctor --dist`: the interconnect before a run spends hours on it. torchrun starts
`python -m gptkit.doctor.dist OUT DATA MAX_MB` on every process (one node: --nproc N; several: the
node flags or SLURM's variables, as `gptkit train`); rank 0 writes OUT (JSON) for the launcher.

Bandwidth is nccl-tests' (doc/PERFORMANCE.md there): for an all-reduce of S bytes taking t seconds,
algbw = S / t and busbw = algbw x 2(n-1)/n, the rate each link must carry, comparable across n.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SIZES_MB = (1, 4, 16, 64, 256)
ITERS = 5
LATENCY_ITERS = 20


def algbw(size_bytes: int, seconds: float) -> float:
    return size_bytes / seconds


def busbw(size_bytes: int, seconds: float, n: int) -> float:
    return algbw(size_bytes, seconds) * 2 * (n - 1) / n


def identity(data: str | None) -> dict:
    """What every rank must agree on: versions, and the shards' manifest hash (when --data is given)."""
    import hashlib

    import torch

    from gptkit import __version__

    out = {
        "gptkit": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None,
    }
    if data:
        m = Path(data) / "manifest.json"
        out["shards"] = hashlib.sha256(m.read_bytes()).hexdigest()[:16] if m.is_file() else f"no manifest in {data}"
    return out


def worker(out: Path, data: str | None, max_mb: float) -> None:
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else None
    if device is not None:  # only with a GPU: one per local rank, before NCCL picks the current one
        torch.cuda.set_device(device)
    dist.init_process_group("gloo" if device is None else "nccl")
    rank, n = dist.get_rank(), dist.get_world_size()
    rows = []
    sizes: list[float] = [s for s in SIZES_MB if s <= max_mb] or [max_mb]
    for mb in sizes:
        count = int(mb * (1 << 20)) // 4
        t = torch.full((count,), float(rank + 1), device=device)
        dist.all_reduce(t)  # warm-up, and the result checked: 1 + 2 + ... + n everywhere
        correct = bool((t == n * (n + 1) / 2).all())
        times = []
        for _ in range(ITERS):
            t.fill_(float(rank + 1))
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            if device is not None:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            correct = correct and bool((t == n * (n + 1) / 2).all())
        mine = sorted(times)[len(times) // 2]
        every: list = [None] * n
        dist.all_gather_object(every, {"seconds": mine, "correct": correct})
        rows.append({"size_bytes": count * 4, "ranks": every})
    small = torch.zeros(2, device=device)
    lat = []
    for _ in range(LATENCY_ITERS):
        t0 = time.perf_counter()
        dist.all_reduce(small)
        lat.append(time.perf_counter() - t0)
    ids: list = [None] * n
    dist.all_gather_object(ids, {"rank": rank, "host": os.uname().nodename, **identity(data)})
    # Every node's first worker writes the (all-gathered) report: c10d gives global rank 0 to
    # whichever node joins first, so "rank 0" may be on another node than the launcher that reads it.
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        from gptkit.fsutil import write_json_atomic

        write_json_atomic(
            out, {"world_size": n, "sizes": rows, "latency_s": sorted(lat)[len(lat) // 2], "identities": ids}
        )
    dist.barrier()
    dist.destroy_process_group()


def summarize(raw: dict) -> dict:
    """The report: per size, the slowest rank's time, algbw and busbw from it, every result correct;
    the consistency checks (each key's values across ranks)."""
    n = raw["world_size"]
    sizes = []
    for row in raw["sizes"]:
        slowest = max(range(n), key=lambda r: row["ranks"][r]["seconds"])
        secs = row["ranks"][slowest]["seconds"]
        sizes.append(
            {
                "size_bytes": row["size_bytes"],
                "seconds": secs,
                "algbw_GBps": algbw(row["size_bytes"], secs) / 1e9,
                "busbw_GBps": busbw(row["size_bytes"], secs, n) / 1e9,
                "slowest_rank": slowest,
                "correct": all(r["correct"] for r in row["ranks"]),
            }
        )
    checks = {}
    for key in ("gptkit", "torch", "cuda", "nccl", "shards"):
        values = {str(i.get(key)) for i in raw["identities"] if key in i}
        if values:
            checks[key] = {
                "same": len(values) == 1,
                "by_rank": {i["rank"]: i.get(key) for i in raw["identities"]},
            }
    return {"world_size": n, "sizes": sizes, "latency_us": raw["latency_s"] * 1e6, "consistency": checks}


# --- what the link should give --------------------------------------------------------------------
# One direction's data-sheet rate of each link, GB/s. A healthy link's all-reduce busbw reaches most
# of it in nccl-tests; under LINK_WARN of it, NCCL is most likely on a slower path than the hardware
# has (TCP instead of InfiniBand, through the host instead of peer-to-peer), usually one variable away.
LINKS: dict[str, tuple[float, str]] = {
    "nvlink4": (450.0, "NVLink 4 (H100 SXM): 900 GB/s both ways, NVIDIA's H100 data sheet"),
    "nvlink3": (300.0, "NVLink 3 (A100 SXM): 600 GB/s both ways, NVIDIA's A100 data sheet"),
    "nvlink2": (150.0, "NVLink 2 (V100 SXM2): 300 GB/s both ways, NVIDIA's V100 data sheet"),
    "pcie5": (63.0, "PCIe 5.0 x16: 32 GT/s x 16 lanes, 128b/130b coding (PCI-SIG)"),
    "pcie4": (31.5, "PCIe 4.0 x16: 16 GT/s x 16 lanes, 128b/130b coding (PCI-SIG)"),
    "pcie3": (15.8, "PCIe 3.0 x16: 8 GT/s x 16 lanes, 128b/130b coding (PCI-SIG)"),
    "ib-ndr": (50.0, "InfiniBand NDR 4x: 400 Gb/s (IBTA)"),
    "ib-hdr": (25.0, "InfiniBand HDR 4x: 200 Gb/s (IBTA)"),
    "ib-edr": (12.5, "InfiniBand EDR 4x: 100 Gb/s (IBTA)"),
    "eth-100g": (12.5, "100 Gigabit Ethernet (IEEE 802.3)"),
    "eth-25g": (3.125, "25 Gigabit Ethernet (IEEE 802.3)"),
    "eth-10g": (1.25, "10 Gigabit Ethernet (IEEE 802.3)"),
}
LINK_WARN = 0.25
NCCL_HINT = (
    "check NCCL_IB_DISABLE (InfiniBand off?), NCCL_SOCKET_IFNAME (the right interface?) and NCCL_P2P_DISABLE "
    "(peer-to-peer off?); NCCL_DEBUG=INFO prints the transport NCCL chose"
)
_IB_BY_GBIT = {400: "ib-ndr", 200: "ib-hdr", 100: "ib-edr"}
_ETH_BY_MBIT = {100_000: "eth-100g", 25_000: "eth-25g", 10_000: "eth-10g"}


def detect_link(nodes: int, gpus: int, topo: str | None, gpu_name: str, ib_gbit: list[float], eth_mbit: list[int]):
    """(link name or None, how it was found). Several nodes: the network between them (InfiniBand's
    port rate from /sys/class/infiniband, else the fastest Ethernet interface's speed); one node's
    GPUs: NVLink where `nvidia-smi topo -m` shows NV# links (its generation from the GPU's name),
    else PCIe (3.0 assumed: the generation is not read). gloo between CPU processes: None."""
    if nodes > 1:
        if ib_gbit:
            rate = max(ib_gbit)
            name = _IB_BY_GBIT.get(int(rate))
            return name, f"InfiniBand port at {rate:g} Gb/s (/sys/class/infiniband)"
        if eth_mbit:
            speed = max(eth_mbit)
            return _ETH_BY_MBIT.get(speed), f"Ethernet at {speed // 1000} Gb/s (/sys/class/net, no InfiniBand)"
        return None, "no InfiniBand port and no Ethernet speed readable"
    if gpus < 2:
        return None, "gloo between processes on one machine: no link to measure against"
    if topo is not None and any(tok.startswith("NV") and tok[2:].isdigit() for tok in topo.split()):
        gen = next(
            (g for key, g in (("H100", "nvlink4"), ("H200", "nvlink4"), ("A100", "nvlink3")) if key in gpu_name),
            "nvlink2",
        )
        return gen, f"NV# links in nvidia-smi topo -m ({gpu_name})"
    return "pcie3", "no NVLink in nvidia-smi topo -m: PCIe (3.0 assumed; give --link pcie4 or pcie5)"


def read_link_facts() -> dict:
    """What detect_link reads from this machine: nvidia-smi topo -m, InfiniBand rates, Ethernet speeds."""
    import glob
    import shutil
    import subprocess

    topo = None
    if shutil.which("nvidia-smi"):
        try:
            topo = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            topo = None
    ib = []
    for f in glob.glob("/sys/class/infiniband/*/ports/*/rate"):  # "200 Gb/sec (4X HDR)"
        try:
            ib.append(float(Path(f).read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    eth = []
    for f in glob.glob("/sys/class/net/*/speed"):
        if "/lo/" in f:
            continue
        try:
            v = int(Path(f).read_text().strip())  # Mb/s; -1 or an error where the link is down or virtual
        except (OSError, ValueError):
            continue
        if v > 0:
            eth.append(v)
    return {"topo": topo, "ib_gbit": ib, "eth_mbit": eth}


def link_verdict(report: dict, link: str | None) -> str | None:
    """A warning when the best busbw measured is under LINK_WARN of the link's data-sheet rate."""
    if link is None or not report["sizes"]:
        return None
    rate, source = LINKS[link]
    best = max(s["busbw_GBps"] for s in report["sizes"])
    if best >= LINK_WARN * rate:
        return None
    return (
        f"all-reduce busbw {best:.2f} GB/s is {best / rate:.0%} of {link}'s {rate:g} GB/s ({source}); "
        f"under {LINK_WARN:.0%} NCCL is likely on a slower path: {NCCL_HINT}"
    )


def ok(report: dict) -> bool:
    return all(s["correct"] for s in report["sizes"]) and all(c["same"] for c in report["consistency"].values())


def run_check(*, nproc: int, launch, data: str | None, max_mb: float, work: Path, echo=lambda s: None) -> dict | None:
    """Start torchrun for the check (launch: a LaunchConfig with the node settings); the report on
    node 0, None on the others."""
    import subprocess

    from gptkit import procs

    out = work / "dist-report.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if launch.nodes > 1:
        cmd += ["--nnodes", str(launch.nodes), "--node-rank", str(launch.node_rank), "--rdzv-backend", "c10d"]
        cmd += ["--rdzv-endpoint", f"{launch.master_addr}:{launch.master_port}", "--rdzv-id", "gptkit-doctor"]
        cmd += ["--rdzv-conf", f"is_host={int(launch.node_rank == 0)}"]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", "gptkit.doctor.dist", str(out), data or "", str(max_mb)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONSAFEPATH": "1"}
    log = work / "dist-torchrun.log"
    with open(log, "wb") as err:
        rc = subprocess.run(cmd, env=env, stderr=err, preexec_fn=procs.child_preexec()).returncode
    if rc != 0:
        from gptkit.errors import GptkitError

        raise GptkitError(f"the distributed check failed (torchrun exit {rc}); its report is in {log}")
    if launch.node_rank != 0:
        return None
    return summarize(json.loads(out.read_text()))


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2] or None, float(sys.argv[3]))
