"""Benchmark the attention modules, side by side with public implementations of the same math.

    python tools/analysis/benchmark.py [--modules SE CBAM] [--shapes 8x256x56x56 8x1024x14x14]
        [--repeats 20] [--warmup 3] [--threads 2] [--out-dir work_dirs/benchmark]

Writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` to ``--out-dir`` (the same
as ``cvattn-mm benchmark``). What is measured, and how, is described in
``cvattn_mm/analysis/benchmark.py``.
"""
import argparse
import sys

from cvattn_mm.analysis.benchmark_command import add_arguments, check_arguments, run
from cvattn_mm.quiet import silence_upstream_noise


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return args


def main(argv=None) -> int:
    silence_upstream_noise()
    run(parse_args(argv))
    return 0


if __name__ == '__main__':
    sys.exit(main())
