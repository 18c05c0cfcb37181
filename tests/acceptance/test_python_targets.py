"""Acceptance: ``run``, ``apply``, ``validate`` and ``serve`` take ``package.module:attribute``."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

from conftest import STEPLINE, Cli

MODULE = """
from stepline import batch, step

def hello(ctx):
    return f"hello {ctx.args['who']}"

nightly = batch("nightly", [step("greet", hello, with_={"who": "{{ params.who }}"})],
                params={"who": "farm"})
both = [nightly, batch("other", [step("greet", hello, args={"who": "x"})])]
number = 5
"""


def test_run_apply_and_validate_a_module_attribute(cli: Cli) -> None:
    cli.write("mybatches/__init__.py", "")
    cli.write("mybatches/defs.py", MODULE)
    ran = cli("run", "mybatches.defs:nightly")
    assert ran.code == 0, ran.report
    assert "succeeded" in ran.out
    assert cli.rows("SELECT result_payload FROM batch_step_result") == [('"hello farm"',)]
    applied = cli("apply", "mybatches.defs:both")
    assert applied.code == 0, applied.report
    assert "nightly: version 1" in applied.out and "other: version 1" in applied.out
    checked = cli("validate", "mybatches.defs:both")
    assert checked.code == 0 and "ok (other, 1 steps)" in checked.out, checked.report
    by_name = cli("run", "nightly", "--param", "who=you")  # batch names still work
    assert by_name.code == 0, by_name.report


def test_bad_module_targets_exit_2_with_the_reason(cli: Cli) -> None:
    cli.write("defs.py", MODULE)
    cases = {
        ("run", "nosuchmodule:nightly"): "no module named 'nosuchmodule'",
        ("apply", "defs:missing"): "has no attribute 'missing'",
        ("run", "defs:number"): "is a int, not a batch definition",
        ("validate", "defs:number"): "is a int, not a batch definition",
        ("run", "defs:both"): "holds 2 batches",
    }
    for args, message in cases.items():
        result = cli(*args)
        assert result.code == 2, result.report
        assert message in result.err, result.report
        assert "Traceback" not in result.stderr, result.report
    assert cli.count("batch_instance") == 0


def test_serve_applies_a_module_attribute(cli: Cli) -> None:
    cli.write("defs.py", MODULE)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [str(STEPLINE), "serve", "defs:both", "--port", str(port)],
        cwd=cli.root,
        env=cli.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        names = {r[0] for r in cli.rows("SELECT name FROM batch_definition")}
        assert names == {"nightly", "other"}
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert "nightly: version 1" in output, output
