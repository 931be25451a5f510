"""A subprocess environment in which installing a package fails loudly and is recorded, and
(with block_network) so does any connection beyond this machine."""
import os
import textwrap

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The export runs in a subprocess in which any attempt to install a package fails loudly and
# is recorded: pip's index is a closed local port, `pip` on PATH is a shim, and
# subprocess / os.system calls that mention pip are refused.
_NO_PIP_SITECUSTOMIZE = textwrap.dedent('''
    import os, subprocess
    _LOG = os.environ['PIP_ATTEMPT_LOG']
    def _record(cmd):
        with open(_LOG, 'a') as f:
            f.write(repr(cmd) + '\\n')
    def _mentions_pip(cmd):
        text = cmd if isinstance(cmd, str) else ' '.join(map(str, cmd))
        return 'pip' in text.split() or ' -m pip' in text or 'pip install' in text
    _Popen_init = subprocess.Popen.__init__
    def _guarded_init(self, args, *a, **k):
        if _mentions_pip(args):
            _record(args)
            raise RuntimeError('package installation attempted: %r' % (args,))
        return _Popen_init(self, args, *a, **k)
    subprocess.Popen.__init__ = _guarded_init
    _system = os.system
    def _guarded_system(cmd):
        if _mentions_pip(cmd):
            _record(cmd)
            raise RuntimeError('package installation attempted: %r' % (cmd,))
        return _system(cmd)
    os.system = _guarded_system
''')



# With block_network, every connection to an address other than 127.0.0.1 / ::1 is refused and
# recorded too (a converter that downloads sample data at run time would crash offline).
_NO_NETWORK_SITECUSTOMIZE = textwrap.dedent('''
    import socket
    _connect = socket.socket.connect
    def _guarded_connect(self, address, *a, **k):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ('127.0.0.1', '::1', 'localhost'):
            with open(_LOG, 'a') as f:
                f.write('connect %r\\n' % (address,))
            raise OSError('network access attempted: %r' % (address,))
        return _connect(self, address, *a, **k)
    socket.socket.connect = _guarded_connect
''')

def offline_env(tmp_path, block_network=False):
    shim_dir = tmp_path / 'shim'
    shim_dir.mkdir()
    log = tmp_path / 'pip_attempts.log'   # installs and (with block_network) connections
    for name in ('pip', 'pip3'):
        shim = shim_dir / name
        shim.write_text(f'#!/bin/sh\necho "$0 $*" >> {log}\necho "pip is disabled in this test" >&2\nexit 1\n')
        shim.chmod(0o755)
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(_NO_PIP_SITECUSTOMIZE + (_NO_NETWORK_SITECUSTOMIZE if block_network else ''))
    env = dict(os.environ)
    env.update({'PIP_NO_INDEX': '1', 'PIP_INDEX_URL': 'http://127.0.0.1:9/simple', 'PIP_RETRIES': '0',
                'PIP_ATTEMPT_LOG': str(log), 'PATH': f'{shim_dir}{os.pathsep}{env.get("PATH", "")}',
                'PYTHONPATH': os.pathsep.join([str(site), _REPO])})
    env.pop('POLYGRAPHY_AUTOINSTALL_DEPS', None)
    return env, log
