"""`paddle-soundcls complexity MODEL ...`: parameters, parameter memory, MACs and activation
memory of registered models (the counting lives in analysis.complexity)."""


def add_parser(subparsers):
    from ..analysis.complexity import add_complexity_arguments
    p = subparsers.add_parser('complexity', help='parameters, parameter memory, MACs and activation memory of models')
    add_complexity_arguments(p)
    return p


def run(args):
    from ..analysis.complexity import run_complexity
    return run_complexity(args)
