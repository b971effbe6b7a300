"""`gptkit doctor`: check the machine before a run (driver, CUDA, torch, GPUs, attention, network, disk)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gptkit.cli.options import Endpoint, JsonOut, Mirror, within

if TYPE_CHECKING:
    from gptkit.doctor.checks import Check

# Symbols and arrows in the table, with ASCII stand-ins for terminals that cannot show them.
_ASCII = str.maketrans({"✓": "+", "✗": "x", "→": "->", "≤": "<=", "≥": ">=", "×": "x"})


def doctor(
    json_out: JsonOut = False,
    strict: Annotated[bool, typer.Option("--strict", help="Also exit 1 on warnings (for scripts and CI).")] = False,
    endpoint: Endpoint = None,
    mirror: Mirror = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            metavar="DIR",
            help="Where datasets and shards will go, for the free-disk check (default: $GPTKIT_HOME).",
        ),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus",
            metavar="N",
            callback=within(1),
            help="GPUs this machine must have (1 or more): their rows fail without them (default: a CPU machine is fine).",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            callback=within(0.1, 60),
            help="Seconds to wait for the Hugging Face endpoint (0.1 to 60).",
        ),
    ] = 3.0,
    dist: Annotated[
        bool, typer.Option("--dist", help="Measure the interconnect: all-reduce bandwidth, latency, consistency.")
    ] = False,
    nproc: Annotated[
        int | None,
        typer.Option("--nproc", metavar="N", help="With --dist: processes on this node (default: every GPU, or 2)."),
    ] = None,
    nodes: Annotated[int | None, typer.Option("--nodes", metavar="N", help="With --dist: as gptkit train.")] = None,
    node_rank: Annotated[
        int | None, typer.Option("--node-rank", metavar="R", help="With --dist: this node's rank (0 to --nodes - 1).")
    ] = None,
    master_addr: Annotated[
        str | None, typer.Option("--master-addr", metavar="HOST", help="With --dist: node 0's address.")
    ] = None,
    master_port: Annotated[
        int | None, typer.Option("--master-port", metavar="PORT", help="With --dist: the rendezvous port.")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", metavar="DIR", help="With --dist: shards every rank must have alike.")
    ] = None,
    max_size: Annotated[
        float, typer.Option("--max-size", metavar="MB", help="With --dist: the largest message (MB).")
    ] = 256,
    link: Annotated[
        str | None,
        typer.Option(
            "--link",
            metavar="LINK",
            help="With --dist: the link to measure against (default: detected): "
            "nvlink2-4, pcie3-5, ib-edr/hdr/ndr, eth-10g/25g/100g.",
        ),
    ] = None,
) -> None:
    """Check drivers, CUDA, torch, GPUs, attention kernels, the HF endpoint, the GPT-2 vocab and free disk.

    Exit code 0 unless a check fails (✗); with --strict, warnings (!) fail too.
    """
    import json

    if dist:
        _dist(json_out, nproc, nodes, node_rank, master_addr, master_port, data, max_size, link)
        return

    from gptkit import paths
    from gptkit.doctor import report
    from gptkit.errors import GptkitError
    from gptkit.hub.endpoint import resolve_endpoint_and_source

    url, source = resolve_endpoint_and_source(endpoint, mirror)
    target = data_dir if data_dir is not None else paths.home()
    if target.expanduser().exists() and not target.expanduser().is_dir():
        raise GptkitError(f"--data-dir {target} is a file, not a directory")

    checks = report.run_checks(url, source, target, timeout=timeout, gpus=gpus)
    code = report.exit_code(checks, strict)
    if json_out:
        print(json.dumps(report.report(checks, strict), indent=2))
    else:
        _print_table(checks, strict, ascii_only=not _stdout_can_encode("✓✗→≤×"))
    if code:
        raise typer.Exit(code)


def _print_table(checks: list[Check], strict: bool, ascii_only: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from gptkit.doctor.checks import FAIL, OK, WARN
    from gptkit.doctor.report import summary

    marks = {OK: ("✓", "green"), WARN: ("!", "yellow"), FAIL: ("✗", "bold red")}

    def tr(s: str) -> str:
        return s.translate(_ASCII) if ascii_only else s

    table = Table(title="gptkit doctor", show_lines=False, title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result", overflow="fold")
    for c in checks:
        mark, style = marks[c.status]
        cell = Text(tr(c.detail))
        if c.fix:
            cell.append("\nfix: " + tr(c.fix), style=style)
        table.add_row(Text(tr(mark), style=style), c.name, cell)
    console = Console(highlight=False)
    console.print(table)
    s = summary(checks, strict)
    verdict = "FAILED" if s["exit_code"] else "OK"
    note = " (--strict: warnings fail)" if strict and s["warn"] else ""
    console.print(f"{s['ok']} ok, {s['warn']} warning(s), {s['fail']} failure(s): {verdict}{note}")


def _stdout_can_encode(text: str) -> bool:
    try:
        text.encode(sys.stdout.encoding or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def _dist(json_out, nproc, nodes, node_rank, master_addr, master_port, data, max_size, link=None) -> None:
    """`doctor --dist`: the node settings as `gptkit train` takes them (flags, else SLURM's variables)."""
    import json
    import os
    import tempfile
    from dataclasses import replace

    from gptkit.doctor.dist import LINKS, detect_link, link_verdict, ok, read_link_facts, run_check
    from gptkit.errors import GptkitError
    from gptkit.train.config import LaunchConfig
    from gptkit.train.slurm import derive

    given = {
        k: v
        for k, v in dict(nodes=nodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port).items()
        if v is not None
    }
    launch = replace(LaunchConfig(), **given)
    cluster = derive(os.environ, given)
    if cluster is not None:
        launch = replace(launch, **{k: v for k, v in cluster.values.items() if k in LaunchConfig.__dataclass_fields__})
        print(cluster.line())
    if link is not None and link not in LINKS:
        raise GptkitError(f"unknown --link {link!r}; choose one of: {', '.join(LINKS)}")
    import torch

    if nproc is None:
        nproc = torch.cuda.device_count() if torch.cuda.is_available() else 2
    with tempfile.TemporaryDirectory(prefix="gptkit-doctor-") as work:
        rep = run_check(nproc=nproc, launch=launch, data=data, max_mb=max_size, work=Path(work))
    if rep is None:
        print(f"node {launch.node_rank}: joined the check; node 0 reports")
        return
    if link is not None:
        how = "given with --link"
    else:
        cuda = torch.cuda.is_available()
        gpus = nproc * launch.nodes if cuda else 0
        link, how = detect_link(
            launch.nodes, gpus, gpu_name=torch.cuda.get_device_name(0) if cuda else "", **read_link_facts()
        )
    rep["link"] = {"name": link, "how": how, **({"GBps": LINKS[link][0], "source": LINKS[link][1]} if link else {})}
    rep["link_warning"] = link_verdict(rep, link)
    if json_out:
        print(json.dumps(rep, indent=2))
    else:
        print(f"all-reduce over {rep['world_size']} ranks (nccl-tests' algbw = size / time, busbw = algbw x 2(n-1)/n)")
        print(f"{'size':>10} {'time ms':>9} {'algbw GB/s':>11} {'busbw GB/s':>11} {'slowest':>8}  result")
        for r in rep["sizes"]:
            print(
                f"{r['size_bytes'] / (1 << 20):>8.0f}MB {r['seconds'] * 1e3:>9.2f} {r['algbw_GBps']:>11.3f} "
                f"{r['busbw_GBps']:>11.3f} {'rank ' + str(r['slowest_rank']):>8}  {'ok' if r['correct'] else 'WRONG'}"
            )
        print(f"small-message latency: {rep['latency_us']:.0f} us")
        for key, c in rep["consistency"].items():
            print(f"{key}: " + ("same on every rank" if c["same"] else f"DIFFERS: {c['by_rank']}"))
        lk = rep["link"]
        print(
            f"link: {lk['name']}, {lk['GBps']:g} GB/s ({lk['how']})"
            if lk["name"]
            else f"link: none known ({lk['how']})"
        )
        if rep["link_warning"]:
            print(f"! {rep['link_warning']}")
    if not ok(rep):
        raise typer.Exit(1)
