"""Run the contract suite and the benchmark on one device (the first GPU run is one command).

    python tools/analysis/device_check.py --device cuda [--no-benchmark]
        [--pytest-args -x -k SE] [--benchmark-args --modules SE CBAM --repeats 5]

1. the contract suite on that device: ``CVATTN_TEST_DEVICE=<device> python -m pytest
   tests/attention/test_contract.py tests/attention/test_gating.py -q [pytest args]``;
2. the benchmark on that device (``tools/analysis/benchmark.py --device <device>
   --out-dir work_dirs/device_check/<device> [benchmark args]``), unless ``--no-benchmark``;
3. a summary: pytest's result line, the benchmark's cases and where its Markdown is.

``--pytest-args`` and ``--benchmark-args`` take every argument after them, up to the other
one: put them last. Exit code: pytest's when the tests fail, else 1 when a benchmark case
failed, else 0; 2 for bad arguments or a device this machine does not have (checked first).
"""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from cvattn_mm.analysis.benchmark_command import add_arguments, check_arguments
from cvattn_mm.analysis.device import device_name, resolve_device
from cvattn_mm.quiet import silence_upstream_noise

ROOT = Path(__file__).resolve().parents[2]
TESTS = ['tests/attention/test_contract.py', 'tests/attention/test_gating.py']
PASS_THROUGH = ('--pytest-args', '--benchmark-args')
#: pytest's last line: counts of outcomes and the time ("3 passed, 1 skipped in 2.51s").
RESULT_LINE = re.compile(r'\b(passed|failed|errors?|skipped|deselected|no tests ran)\b.* in '
                         r'[\d.]+s')


def split_pass_through(argv: Sequence[str]) -> Tuple[List[str], Dict[str, List[str]]]:
    """``argv`` without the pass-through groups, and the arguments of each group (all that
    follow its flag, up to the other flag)."""
    own, groups, current = [], {flag: [] for flag in PASS_THROUGH}, None
    for arg in argv:
        if arg in PASS_THROUGH:
            current = groups[arg]
        elif current is None:
            own.append(arg)
        else:
            current.append(arg)
    return own, groups


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The tool's arguments; ``benchmark`` holds the benchmark's parsed arguments (None with
    ``--no-benchmark``). A device this machine does not have exits through ``parser.error``."""
    own, groups = split_pass_through(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', required=True, help="'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument('--no-benchmark', action='store_true', help='run the tests only')
    for flag, what in (('--pytest-args', 'pytest (after the test files and -q)'),
                       ('--benchmark-args', 'tools/analysis/benchmark.py')):
        parser.add_argument(flag, nargs='*', default=[], metavar='ARG',
                            help=f'the remaining arguments are passed to {what}')
    args = parser.parse_args(own)
    try:
        args.device = str(resolve_device(args.device))
    except ValueError as e:
        parser.error(f'--device {args.device}: {e}')
    args.pytest_args = groups['--pytest-args']
    args.benchmark = None if args.no_benchmark else benchmark_args(
        args.device, groups['--benchmark-args'])
    return args


def benchmark_args(device: str, argv: Sequence[str]) -> argparse.Namespace:
    """The benchmark's arguments on ``device``, writing to ``work_dirs/device_check/<device>``
    unless ``argv`` gives ``--out-dir``."""
    parser = argparse.ArgumentParser(prog='device_check.py --benchmark-args')
    add_arguments(parser)
    if '--device' in argv:
        parser.error('give the device once, with device_check.py --device')
    args = parser.parse_args(['--out-dir', os.path.join('work_dirs', 'device_check', device),
                              *argv, '--device', device])
    check_arguments(parser, args)
    return args


def run_tests(device: str, pytest_args: Sequence[str]) -> Tuple[int, str]:
    """Run the contract suite on ``device``, its output passed through; pytest's exit code
    and its result line."""
    command = [sys.executable, '-m', 'pytest', *TESTS, '-q', *pytest_args]
    print(f'$ CVATTN_TEST_DEVICE={device} {" ".join(command[1:])}', flush=True)
    proc = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, CVATTN_TEST_DEVICE=device),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = []
    while chunk := os.read(proc.stdout.fileno(), 4096):  # as it comes: pytest's dots too
        output.append(chunk.decode(errors='replace'))
        sys.stdout.write(output[-1])
        sys.stdout.flush()
    results = [line for line in ''.join(output).splitlines() if RESULT_LINE.search(line)]
    result = results[-1].strip(' =') if results else 'no result line (see the output above)'
    return proc.wait(), result


def run_benchmark(args: argparse.Namespace) -> Tuple[Dict[str, int], str]:
    """Run the benchmark; the count of its cases by status and the path of its Markdown."""
    from cvattn_mm.analysis.benchmark_command import run

    results = run(args)
    counts = {'ok': 0, 'skipped': 0, 'error': 0}
    for kind in ('modules', 'peers', 'models'):
        for record in results[kind]:
            counts[record['status']] += 1
    return counts, os.path.join(args.out_dir, 'benchmark.md')


def main(argv: Optional[Sequence[str]] = None) -> int:
    silence_upstream_noise()
    args = parse_args(argv)
    code, result = run_tests(args.device, args.pytest_args)
    name = device_name(resolve_device(args.device))
    lines = [f'device check on {args.device}' + (f' ({name})' if name != args.device else ''),
             f'  tests      {result} (pytest exit code {code})']
    if args.benchmark is not None:
        counts, path = run_benchmark(args.benchmark)
        lines.append(f'  benchmark  {sum(counts.values())} cases: {counts["ok"]} ok, '
                     f'{counts["skipped"]} skipped, {counts["error"]} failed; Markdown: {path}')
        code = code or int(counts['error'] > 0)
    print('\n'.join(lines))
    return code


if __name__ == '__main__':
    sys.exit(main())
