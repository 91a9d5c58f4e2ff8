"""The ``cvattn-mm`` console command: everyday entry points of the library."""
import argparse
import sys

from mmengine.config import DictAction


def list_modules(args) -> None:
    from .attention.catalog import list_attention_modules

    rows = list_attention_modules(args.channels)
    table = [('name', 'family', 'position', f'params@C={args.channels}', 'paper')] + [
        (r['name'], r['family'], r['paper_position'], f'{r["params"]:,d}', r['paper'])
        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print('  '.join([row[i].ljust(widths[i]) for i in range(3)] +
                        [row[3].rjust(widths[3]), row[4]]))


def print_insertions(args) -> None:
    from .config import build_model, load_config
    from .insertion.plugin_checks import check_plugins
    from .insertion.report import format_rows, insertion_rows

    cfg = load_config(args.config, args.cfg_options)
    check_plugins(cfg.model, cfg.get('default_scope', 'mmengine'))
    model = build_model(cfg)
    print(format_rows(insertion_rows(model), sum(p.numel() for p in model.parameters())))


def benchmark(args) -> None:
    from .analysis.benchmark_command import check_arguments, run

    check_arguments(args.parser, args)
    run(args)


def visualize(args) -> None:
    from .visualization.command import run

    run(args)


def main(argv=None) -> int:
    from .analysis.benchmark_command import add_arguments as add_benchmark_arguments
    from .quiet import silence_upstream_noise
    from .visualization.command import add_arguments as add_visualize_arguments

    parser = argparse.ArgumentParser(prog='cvattn-mm', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)
    p = commands.add_parser('list', help='list the attention modules and their metadata')
    p.add_argument('--channels', type=int, default=256, help='C for the parameter counts')
    p.set_defaults(run=list_modules)
    p = commands.add_parser('insertions', help="where a config's attention lands")
    p.add_argument('config')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='key=value overrides')
    p.set_defaults(run=print_insertions)
    p = commands.add_parser('benchmark', help='time the modules side by side with public '
                            'implementations (= tools/analysis/benchmark.py)')
    add_benchmark_arguments(p)
    p.set_defaults(run=benchmark, parser=p)
    p = commands.add_parser('visualize', help="draw the attention maps of a config's model on "
                            'images (= tools/visualize_attention.py)')
    add_visualize_arguments(p)
    p.set_defaults(run=visualize)
    args = parser.parse_args(argv)
    silence_upstream_noise()
    args.run(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
