"""`paddle-soundcls serve MODEL_OR_DIR`: an HTTP API and a web page for a model (the server and
its options live in paddle_soundcls.serve)."""


def add_parser(subparsers):
    from ..serve import add_serve_arguments
    p = subparsers.add_parser('serve', help='an HTTP API and a web page for a model (export directories need no '
                              'Paddle)')
    add_serve_arguments(p)
    return p


def run(args):
    from ..serve import run_serve
    return run_serve(args)
