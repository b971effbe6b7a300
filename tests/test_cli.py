"""The command line as a whole: every --help works and starts without heavy imports, and user
errors are one line on stderr with a non-zero exit and no traceback.

COMMANDS is read from the Typer app, so a new command is covered as soon as it is registered. Add a
user error to USER_ERRORS (args with {tmp} / {missing} / {file} placeholders, and a piece of the
expected message).
"""

import json
import os
import subprocess
import sys

import pytest
import typer
from conftest import assert_one_line_error, run_cli

import gptkit.cli


def registered_commands(group=None, path=()) -> list[tuple[str, ...]]:
    """Every command and command group of the app as its words on the command line ("mirror", "serve")."""
    group = group if group is not None else typer.main.get_command(gptkit.cli.app)
    out = []
    for name, cmd in sorted(group.commands.items()):
        out.append((*path, name))
        if hasattr(cmd, "commands"):
            out += registered_commands(cmd, (*path, name))
    return out


COMMANDS = registered_commands()
# None of these may load for `gptkit --help` or `gptkit CMD --help`: they cost seconds.
HEAVY = ("torch", "numpy", "datasets", "transformers", "huggingface_hub", "safetensors", "matplotlib", "gguf")

USER_ERRORS = [
    # bad flag values
    pytest.param(
        ["doctor", "--endpoint", "ftp://example.invalid"],
        "invalid Hugging Face endpoint",
        id="doctor-endpoint-not-http",
    ),
    pytest.param(
        ["doctor", "--endpoint", "http://127.0.0.1:9", "--mirror"],
        "either --endpoint or --mirror",
        id="doctor-endpoint-and-mirror",
    ),
    pytest.param(
        ["download", "fineweb-edu", "--subset", "nope", "--endpoint", "http://127.0.0.1:9"],
        "unknown subset 'nope'",
        id="download-unknown-subset",
    ),
    # unknown presets
    pytest.param(["download", "no-such-preset"], "unknown preset 'no-such-preset'", id="download-unknown-preset"),
    pytest.param(["train", "--preset", "nope", "--dry-run"], "unknown model preset 'nope'", id="train-unknown-preset"),
    # model shape
    pytest.param(
        ["train", "--preset", "small", "--seq-len", "64", "--block-size", "32", "--dry-run"],
        "--block-size 32 is smaller than --seq-len 64",
        id="train-block-size-below-seq-len",
    ),
    pytest.param(["train", "--n-embd", "100", "--dry-run"], "--n-embd 100 is not divisible", id="train-n-embd-n-head"),
    # devices: refused before anything starts, on a GPU machine too (checked before the GPU count)
    pytest.param(
        ["train", "--device", "cuda", "--gpus", "0", "--dry-run"], "--gpus 0 with --device cuda", id="train-cuda-gpus-0"
    ),
    pytest.param(
        ["train", "--device", "cuda", "--gpus", "0", "--plan"],
        "--gpus 0 with --device cuda",
        id="train-cuda-gpus-0-plan",
    ),
    # bad paths
    pytest.param(["doctor", "--data-dir", "{file}"], "is a file, not a directory", id="doctor-data-dir-is-a-file"),
    pytest.param(["sample", "--model", "{missing}", "hi"], "no such file or directory", id="sample-missing-model"),
    pytest.param(
        ["convert", "{missing}", "{tmp}/out.safetensors"], "no such file or directory", id="convert-missing-source"
    ),
    pytest.param(["mirror", "serve", "{missing}"], "does not exist", id="mirror-missing-root"),
    pytest.param(["plot", "{missing}"], "exist: no such file or directory", id="plot-missing-run"),
]

# Errors Typer itself finds while parsing (unknown option, value of the wrong type): exit 2 with
# one line naming the command and its --help, never a traceback or a usage box.
USAGE_ERRORS = [
    pytest.param(["doctor", "--timeout", "abc"], "--timeout", id="doctor-timeout-not-a-number"),
    pytest.param(["doctor", "--no-such-flag"], "No such option", id="unknown-option"),
    pytest.param(["no-such-command"], "No such command", id="unknown-command"),
]


def test_commands_are_read_from_the_app():
    # The list the --help tests below walk is the app's own: it holds eval and the mirror group's serve.
    assert {("eval",), ("mirror",), ("mirror", "serve"), ("train",)} <= set(COMMANDS)
    assert len(COMMANDS) == len(set(COMMANDS))


def test_top_level_help_lists_every_command():
    r = run_cli("--help", check=True)
    assert "Usage:" in r.stdout
    for cmd in {c[0] for c in COMMANDS}:
        assert cmd in r.stdout, f"{cmd} missing from gptkit --help"
    v = run_cli("--version", check=True)
    from gptkit import __version__

    assert v.stdout.strip() == f"gptkit {__version__}"


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_command_help_works(cmd):
    r = run_cli(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "Usage:" in r.stdout and " ".join(cmd) in r.stdout
    assert "--help" in r.stdout


def test_help_shows_the_extras_brackets_and_ranges_are_checked():
    """`gptkit[eval]` is text, not Rich markup; a range is checked with a one-line error."""
    r = run_cli("eval", "--help", env={"COLUMNS": "250"}, check=True)
    assert "(needs gptkit[eval])" in r.stdout, r.stdout
    t = run_cli("train", "--help", env={"COLUMNS": "250"}, check=True)  # where the recipe's values come from
    assert "takes the --preset's value" in t.stdout and "--plan prints the run's values" in t.stdout
    line = assert_one_line_error(run_cli("download", "fineweb-edu", "--workers", "0"))
    assert "--workers" in line and "0 is not between 1 and 32" in line, line


PROBE = r"""
import json, sys
heavy, commands = json.loads(sys.argv[1])
loaded = lambda: sorted(m for m in heavy if m in sys.modules)
out = {}
import gptkit.cli
out["import gptkit.cli"] = [0, loaded()]
for cmd in commands:
    try:
        gptkit.cli.app([*cmd, "--help"], prog_name="gptkit")
        code = 0
    except SystemExit as e:
        code = e.code
    out["gptkit " + " ".join(cmd)] = [code, loaded()]
print("\n" + json.dumps(out))
"""


def test_help_never_imports_heavy_modules():
    # One interpreter runs every --help in turn; modules only accumulate, so the first entry that
    # shows a heavy module names the command that imported it.
    arg = json.dumps([HEAVY, [[]] + [list(c) for c in COMMANDS]])
    r = subprocess.run([sys.executable, "-c", PROBE, arg], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(result) == len(COMMANDS) + 2
    for what, (code, heavy) in result.items():
        assert code in (0, None), f"{what} --help exited {code}"
        assert heavy == [], f"`{what} --help` imported {heavy}: move those imports into the command body"


@pytest.mark.parametrize("args, message", USER_ERRORS)
def test_user_errors_are_one_line(args, message, tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a directory\n")
    fill = {"tmp": tmp_path, "missing": tmp_path / "does" / "not" / "exist", "file": a_file}
    r = run_cli(*[a.format(**fill) for a in args], cwd=tmp_path)
    line = assert_one_line_error(r)
    assert r.returncode == 1, r.returncode
    assert line.startswith("gptkit: error: "), line
    assert message in line, line


@pytest.mark.parametrize("args, message", USAGE_ERRORS)
def test_usage_errors_exit_2_without_traceback(args, message):
    r = run_cli(*args)
    line = assert_one_line_error(r)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in line and "--help" in line, line


ENDPOINT_PROBE = r"""
import contextlib, io, json, sys
import gptkit.cli
out = {}
for cmd in sorted(gptkit.cli.hub_commands()):
    sys.argv = ["gptkit", cmd]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            gptkit.cli.main()
        except SystemExit as e:
            code = e.code
    out[cmd] = [code, err.getvalue(), "huggingface_hub" in sys.modules]
print("\n" + json.dumps(out))
"""


def test_every_hub_command_refuses_a_malformed_hf_endpoint_before_importing_huggingface_hub():
    # The hub commands are the app's HubCommand / HubGroup registrations (eval among them), each
    # refused in one line before its body could import huggingface_hub, which would fail with a traceback.
    env = {**os.environ, "HF_ENDPOINT": "hf-mirror.com"}
    r = subprocess.run([sys.executable, "-c", ENDPOINT_PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"eval", "download", "mirror"} <= set(result) and "plot" not in result
    assert set(result) <= {c[0] for c in COMMANDS}
    for cmd, (code, err, imported) in result.items():
        assert code == 1 and not imported, (cmd, code, err)
        assert err.startswith("gptkit: error: invalid Hugging Face endpoint HF_ENDPOINT 'hf-mirror.com'"), (cmd, err)
        assert len(err.strip().splitlines()) == 1, (cmd, err)
