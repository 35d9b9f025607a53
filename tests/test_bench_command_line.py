"""The benchmarks write how they were started without the machine's interpreter path."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from bench_common import command_line  # noqa: E402


def test_the_command_is_repo_relative_and_quoted():
    script = "/some/checkout/bench/bench_hypertile.py"
    assert command_line(script, ["--repeats", "3", "1"]) == "python bench/bench_hypertile.py --repeats 3 1"
    assert command_line(script, ["--url", "http://h:1/a b"]) == "python bench/bench_hypertile.py --url 'http://h:1/a b'"
    assert command_line(script, []) == "python bench/bench_hypertile.py"
