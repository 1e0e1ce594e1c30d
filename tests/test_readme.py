"""The README is the user's entry point: its set-up commands are what CI runs."""

import re
import subprocess
import sys

from conftest import ROOT, run_cli


def setup_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up on a new machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.*?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    commands = setup_commands()
    assert len(commands) == 2
    demo, tests = commands
    assert demo.endswith("transferset demo") and "torch==2.13.0" in demo
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "the test command in .ci/run must be the README's, to the letter"


def test_help_lists_every_stage_without_importing_torch():
    code = "import sys, cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported for --help'\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for command in ("convert", "generate", "inspect", "train", "eval", "demo"):
        assert command in proc.stdout


def test_unknown_subcommand_is_one_line_exit_2():
    proc = run_cli("distil")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
