"""The ``cvattn-mm`` console command: everyday entry points of the library."""
import argparse
import sys


def list_modules(args) -> None:
    from .attention.catalog import list_attention_modules

    rows = list_attention_modules(args.channels)
    print(f'{"name":28s} {"family":16s} {"position":18s} {"params@C=" + str(args.channels):>12s}'
          '  paper')
    for r in rows:
        print(f'{r["name"]:28s} {r["family"]:16s} {r["paper_position"]:18s} '
              f'{r["params"]:12,d}  {r["paper"]}')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='cvattn-mm', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)
    p = commands.add_parser('list', help='list the attention modules and their metadata')
    p.add_argument('--channels', type=int, default=256, help='C for the parameter counts')
    p.set_defaults(run=list_modules)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
