"""Every example in README.md and docs/*.md runs as written, offline (see tests/docs_runner.py)."""
import glob
import importlib
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import docs_offline
import docs_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))


# ----------------------------------------------------------------------------- the runner itself

def write(tmp_path, text):
    path = tmp_path / 'page.md'
    path.write_text(text)
    return str(path)


def run_page(tmp_path, text):
    return docs_runner.Page(write(tmp_path, text), str(tmp_path), dict(os.environ)).run()


def test_a_failing_block_fails_the_page(tmp_path):
    with pytest.raises(docs_runner.DocsError, match='page.md:3: the python block failed'):
        run_page(tmp_path, 'Text.\n\n```python\nundefined_name\n```\n')
    with pytest.raises(docs_runner.DocsError, match='exited with 3'):
        run_page(tmp_path, '```bash\ntrue\nexit 3\n```\n')


def test_blocks_of_a_page_share_a_namespace_and_a_folder(tmp_path):
    page = run_page(tmp_path, '```python\nx = 2\n```\n\n```python\nassert x == 2\n```\n\n'
                              '```bash\necho hi > made.txt\n```\n\n```sh\ntest -f made.txt\n```\n')
    assert len(page.ran) == 4


def test_markers_need_a_reason_and_a_known_kind(tmp_path):
    with pytest.raises(docs_runner.DocsError, match="'skip' needs a reason"):
        docs_runner.parse(write(tmp_path, '<!-- docs-test: skip -->\n```bash\nfalse\n```\n'))
    with pytest.raises(docs_runner.DocsError, match='unreadable docs-test marker'):
        docs_runner.parse(write(tmp_path, '<!-- docs-test: ignore (why) -->\n```bash\nfalse\n```\n'))
    with pytest.raises(docs_runner.DocsError, match='right before a fence'):
        docs_runner.parse(write(tmp_path, '<!-- docs-test: skip (why) -->\n\n```bash\nfalse\n```\n'))
    page = run_page(tmp_path, '<!-- docs-test: skip (needs a microphone) -->\n```bash\nfalse\n```\n')
    assert page.skipped == [('page.md:2', 'skip', 'needs a microphone')]


def test_shown_output_is_checked(tmp_path):
    run_page(tmp_path, '```python\nprint(1, "a ... b")\n```\n\n<!-- docs-test: output -->\n```\n1 a ... b\n```\n')
    with pytest.raises(docs_runner.DocsError, match='differs from the one shown'):
        run_page(tmp_path, '```python\nprint(2)\n```\n\n<!-- docs-test: output -->\n```\n1\n```\n')
    shape = '<!-- docs-test: output shape -->\n```json\n{"a": 1, "b": [{"c": "x"}]}\n```\n'
    run_page(tmp_path, '```python\nprint(\'{"a": 3.5, "b": [{"c": "y"}, {"c": "z"}]}\')\n```\n\n' + shape)
    with pytest.raises(docs_runner.DocsError, match=r"output\['b'\]\[0\] has the keys"):
        run_page(tmp_path, '```python\nprint(\'{"a": 3.5, "b": [{"d": "y"}]}\')\n```\n\n' + shape)


def test_substitutions_replace_downloads_and_long_runs():
    code = docs_runner.substitute("pip install -e '.[cpu]' && python examples/esc50/train.py --demo\n"
                                  "Module(name='panns_cnn14'); trainer.train(s, epochs=10)\n"
                                  "curl http://127.0.0.1:8866/healthz\n")
    assert code == ("python examples/esc50/train.py --demo --epochs 1\n"
                    "Module(name='efficientat_mn04'); trainer.train(s, epochs=1)\n"
                    "curl http://127.0.0.1:{port}/healthz\n")


# ----------------------------------------------------------------------------- links and the picture

def test_relative_links_and_anchors_exist():
    for page in PAGES:
        text = open(os.path.join(ROOT, page), encoding='utf-8').read()
        text = re.sub(r'```.*?```', '', text, flags=re.S)
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'[a-z]+://', target):
                continue
            path, _, anchor = target.partition('#')
            full = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
            assert os.path.exists(full), f'{page}: link to {target}: {full} does not exist'
            if anchor:
                assert anchor in anchors(full), f'{page}: link to {target}: no heading gives #{anchor}'


def anchors(path):
    """GitHub's anchors of a Markdown file's headings."""
    text = re.sub(r'```.*?```', '', open(path, encoding='utf-8').read(), flags=re.S)
    found = set()
    for heading in re.findall(r'^#{1,6} (.+)$', text, flags=re.M):
        slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
        found.add(slug)
    return found


def test_every_name_in_the_architecture_picture_exists():
    text = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
    picture = re.search(r'<!-- architecture -->\n```text\n(.*?)```', text, flags=re.S).group(1)
    picture = re.sub(r'\b\w+\.json\b', '', picture)   # file names, not code
    names = re.findall(r'\b([a-z_]+(?:/[a-z_]+)*(?:\.[A-Za-z_]+)+|[a-z_]+/)', picture)
    assert len(names) >= 15, names
    for name in names:
        if name.endswith('/'):
            assert os.path.isdir(os.path.join(ROOT, 'paddle_soundcls', name)), name
            continue
        module, attr = name.replace('/', '.').rsplit('.', 1)
        try:
            found = importlib.import_module(f'paddle_soundcls.{module}')
            assert hasattr(found, attr), f'{name}: paddle_soundcls.{module} has no {attr}'
        except ModuleNotFoundError:   # a module, not a module's attribute
            importlib.import_module(f'paddle_soundcls.{module}.{attr}')


# ----------------------------------------------------------------------------- the pages

def tone(seconds, rate, freq=440.0, noise=0.05, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + noise * np.random.RandomState(seed).randn(t.size)
    return wave.astype('float32')


def make_audio(world):
    sf.write(world / 'dog.wav', tone(3, 44100, 600), 44100)
    sf.write(world / 'rain.flac', tone(2, 22050, 0, noise=0.2), 22050)
    sf.write(world / 'clip.wav', tone(2, 32000, 300), 32000)
    for name in ('street.wav', 'long.wav', 'street_1h.wav'):
        sf.write(world / name, tone(12, 16000, 200, noise=0.1), 16000)
    for folder in ('clips', 'archive', 'data/dev', 'data/calib', 'device_irs'):
        (world / folder).mkdir(parents=True)
    for k in range(3):
        sf.write(world / 'clips' / f'clip_{k}.wav', tone(2, 32000, 300 + 200 * k, seed=k), 32000)
        sf.write(world / 'archive' / f'rec_{k}.wav', tone(4, 16000, 250 + 100 * k, seed=k), 16000)
    for k in range(2):
        ir = np.exp(-np.arange(800) / 80.0) * np.random.RandomState(k).randn(800)
        sf.write(world / 'device_irs' / f'ir_{k}.wav', (ir / np.abs(ir).max()).astype('float32'), 32000)


def make_models(world, env):
    """ckpt/best_model (efficientat_mn04 on the demo set, one epoch), its export, a tagger export."""
    from paddle_soundcls.datasets.demo import make_demo_dataset
    demo = make_demo_dataset(str(world / 'ESC-50-master'), num_class=5, clips_per_class=5, seconds=1.0)
    for path in glob.glob(os.path.join(demo, 'audio', '*.wav')):
        label = int(os.path.basename(path).rsplit('-', 1)[1].split('.')[0])
        os.makedirs(world / 'my_sounds' / f'class_{label}', exist_ok=True)
        shutil.copy(path, world / 'my_sounds' / f'class_{label}')
    for k, path in enumerate(sorted(glob.glob(os.path.join(demo, 'audio', '*.wav')))[:12]):
        shutil.copy(path, world / 'data' / ('dev' if k % 2 else 'calib'))
    script = ('import paddle, sys\n'
              'from paddle_soundcls import Module, Trainer\n'
              'from paddle_soundcls.datasets import ESC50\n'
              'train, dev = ESC50(mode="train", data_dir=sys.argv[1], duration=1.0), ESC50(mode="dev", data_dir=sys.argv[1], duration=1.0)\n'
              'model = Module("efficientat_mn04", label_map=train.labels, seed=0)\n'
              'opt = paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters())\n'
              'Trainer(model, opt, checkpoint_dir="ckpt", use_vdl=False).train(train, epochs=1, batch_size=8, eval_dataset=dev)\n')
    commands = [[sys.executable, '-c', script, demo],
                ['paddle-soundcls', 'export', '--checkpoint', 'ckpt/best_model', '--output', 'exported'],
                ['paddle-soundcls', 'export', '--model', 'efficientat_mn04', '--task', 'tagging', '--output', 'tagger']]
    for command in commands:
        done = subprocess.run(command, cwd=world, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f'{command}: {done.stderr[-3000:]}'
    shutil.copytree(world / 'ckpt', world / 'ckpt_cnn14')
    shutil.copytree(world / 'exported', world / 'exported_mn10')


def make_scenes(world):
    from paddle_soundcls.datasets.scenes import make_scenes as write_scenes
    scenes = write_scenes(str(world / '_scenes'), num_scenes=5, seconds=4.0, classes=5, seed=0, split=(0.4, 0.4, 0.2))
    for path in glob.glob(os.path.join(scenes, 'audio', '*.wav')):
        shutil.copy(path, world)
    for part in ('train', 'dev'):
        shutil.copy(os.path.join(scenes, 'meta', f'{part}_events.csv'), world)
    shutil.rmtree(scenes)


@pytest.fixture(scope='session')
def world(tmp_path_factory):
    """The files every page starts with (docs_runner.WORLD_FILES), made once."""
    world = tmp_path_factory.mktemp('docs_world')
    site = world / '_site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(docs_offline.sitecustomize_source())
    env = dict(os.environ, PADDLE_SOUNDCLS_HOME=str(world / 'home'), PYTHONPATH=docs_runner.python_env(str(site)))
    make_audio(world)
    make_models(world, env)
    make_scenes(world)
    return world


def page_env(folder, site):
    env = dict(os.environ, PADDLE_SOUNDCLS_HOME=str(folder / 'home'), PYTHONPATH=docs_runner.python_env(site),
               PYTHONWARNINGS='ignore')
    env.pop('PYTEST_CURRENT_TEST', None)
    return env


def run_docs_page(page, world, tmp_path, slow):
    folder = tmp_path / 'page'
    # The README's set-up command writes ckpt/ itself (another model's checkpoint there would be refused).
    shutil.copytree(world, folder, ignore=shutil.ignore_patterns('home', *(['ckpt'] if page == 'README.md' else [])))
    (folder / 'home').mkdir()
    for name in ('examples', 'tools', 'benchmarks'):   # the commands name them from the repository root
        os.symlink(os.path.join(ROOT, name), folder / name)
    shutil.copytree(world / 'ESC-50-master', folder / 'home' / 'ESC-50-master')
    from paddle_soundcls.models import registry
    registry.list_models()                # the families are registered on first use: before the copy
    registered = dict(registry._MODELS)   # a page may register a model: it stays the page's
    sys.path.insert(0, ROOT)
    try:
        with docs_offline.installed():   # python blocks run in this process
            result = docs_runner.Page(os.path.join(ROOT, page), str(folder), page_env(folder, str(world / '_site')),
                                      slow=slow, page=page).run()
    finally:
        sys.path.remove(ROOT)
        registry._MODELS.clear()
        registry._MODELS.update(registered)
    return result


@pytest.mark.parametrize('page', PAGES)
def test_page(page, world, tmp_path):
    result = run_docs_page(page, world, tmp_path, slow=False)
    print(f'{page}: ran {len(result.ran)} blocks; skipped {result.skipped}')


@pytest.mark.slow
@pytest.mark.parametrize('page', PAGES)
def test_page_with_slow_blocks(page, world, tmp_path):
    run_docs_page(page, world, tmp_path, slow=True)
