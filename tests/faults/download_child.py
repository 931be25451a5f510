"""Download into the cache ($PADDLE_SOUNDCLS_HOME) in a process of its own.

    python download_child.py fetch URL FILENAME SHA256     cache.fetch; prints the cached path
    python download_child.py esc50 URL                     ESC50('dev', split=2); prints its data_dir

Fault point (PSC_FAULT): 'unpacked', the ESC-50 archive is unpacked into its temporary
folder, not yet moved into place.
"""
import sys
import zipfile

from faultkit import fault_point, fault_spec
from paddle_soundcls import cache


def main():
    spec = fault_spec()
    real_extractall = zipfile.ZipFile.extractall

    def extractall(self, *args, **kwargs):
        real_extractall(self, *args, **kwargs)
        fault_point('unpacked', spec)
    zipfile.ZipFile.extractall = extractall

    if sys.argv[1] == 'fetch':
        _, _, url, filename, sha256 = sys.argv
        print(cache.fetch(url, filename, sha256=sha256, timeout=30, progress=False), flush=True)
    else:
        from paddle_soundcls.datasets import ESC50, esc50
        esc50.ESC50_URL = sys.argv[2]
        print(ESC50('dev', split=2, duration=0.2).data_dir, flush=True)


if __name__ == '__main__':
    main()
