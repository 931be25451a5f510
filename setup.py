from setuptools import find_packages, setup

# What running an export needs (deploy.Predictor, `paddle-soundcls predict|tag|benchmark EXPORT_DIR`):
# no Paddle, paddle2onnx, VisualDL or matplotlib.
RUNTIME = ['numpy', 'soundfile', 'onnxruntime', 'tqdm']
# Training and export. PaddlePaddle itself comes from the `cpu` extra or from the user's own
# `paddlepaddle-gpu` install: both provide the `paddle` module, so neither can be required here.
TRAIN = [
    'paddle2onnx>=2.0',
    'onnx',
    'visualdl',
    'matplotlib',
    'ml_dtypes',  # imported by onnxruntime.quantization (int8 export), which does not declare it
]
SERVE = ['fastapi>=0.100', 'uvicorn>=0.20', 'python-multipart>=0.0.9', 'websockets>=12']
# Whole archives: embedding folders (Parquet) and their similarity index; Ray for a cluster.
ARCHIVE = ['pyarrow>=14', 'faiss-cpu>=1.7.3']
CLUSTER = ['ray[data]>=2.9'] + ARCHIVE
# Running TFLite exports (Predictor engine 'tflite'): the LiteRT interpreter only.
LITERT = ['ai-edge-litert>=1.2']
# Making them (export --format tflite / savedmodel): onnx2tf and what it imports, which it does not
# declare itself; the converter pinned to the release these exports are tested with.
TFLITE = ['onnx2tf==1.28.8', 'tensorflow>=2.19,<2.22', 'tf-keras>=2.19,<2.22', 'onnx', 'onnx-graphsurgeon>=0.5',
          'sne4onnx>=1.0.13', 'sng4onnx>=1.0.4', 'psutil', 'requests', 'h5py'] + LITERT

setup(
    name='paddle_soundcls',
    version='0.1.0',
    description='Fine-tune, tag, export and deploy pretrained sound classifiers with PaddlePaddle',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['paddle_soundcls', 'paddle_soundcls.*']),
    package_data={'paddle_soundcls': ['data/*.csv', 'serve/static/*']},
    python_requires='>=3.9',
    install_requires=RUNTIME,
    extras_require={
        'train': TRAIN,                                    # with your own paddlepaddle / paddlepaddle-gpu
        'serve': SERVE,
        'archive': ARCHIVE,
        'cluster': CLUSTER,
        'litert': LITERT,
        'tflite': TFLITE,
        'cpu': ['paddlepaddle>=3.0'] + TRAIN + SERVE + ARCHIVE,   # everything, with the CPU build of Paddle
        'test': ['pytest', 'scikit-learn', 'librosa>=0.10', 'httpx', 'selenium', 'huggingface_hub'] + SERVE + CLUSTER + TFLITE,
    },
    entry_points={'console_scripts': ['paddle-soundcls=paddle_soundcls.cli:main']},
)
