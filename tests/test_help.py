"""`--help` of every command: no hidden internals, help text and the default of every
option, as an operator reads them."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    from demo.cli import build_parser as demo_parser
    from edge.cli import build_parser as edge_parser
    from gslb.cli import build_parser as gslb_parser

    out = []
    for name, parser in (("gslb", gslb_parser()), ("edge", edge_parser()),
                         ("gslb demo", demo_parser())):
        out.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    if child.add_help:           # `gslb demo` parses its own arguments
                        out.append((f"{name} {sub}", child))
    return out


def test_every_option_says_what_it_does_and_its_default():
    missing = []
    for name, parser in parsers():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = "/".join(action.option_strings) or action.dest
            text = action.help or ""
            if not text or text == argparse.SUPPRESS:
                missing.append(f"{name} {flag}: no help")
                continue
            default = action.default
            shows_default = "%(default)" in text or "default" in text
            if default not in (None, False, argparse.SUPPRESS) and not shows_default:
                missing.append(f"{name} {flag}: default {default!r} not shown")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("command", [["gslb"], ["gslb", "serve"], ["gslb", "check"],
                                     ["gslb", "explain"], ["gslb", "reload"],
                                     ["gslb", "demo"], ["edge"], ["edge", "serve"],
                                     ["edge", "validate"], ["edge", "purge"],
                                     ["edge", "whitelist"]])
def test_help_shows_no_internals(command):
    module = {"gslb": "gslb.cli", "edge": "edge.cli"}[command[0]]
    out = subprocess.run([sys.executable, "-m", module, *command[1:], "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: "), out.stderr
    assert "SUPPRESS" not in out.stdout, out.stdout
    # The supervisor's internal `worker` command is neither listed nor described.
    assert not re.search(r"[{,]worker[,}]|^\s+worker\s", out.stdout, re.M), out.stdout
