from setuptools import find_packages, setup

setup(
    name='paddle_soundcls',
    version='0.1.0',
    description='Fine-tune, tag, export and deploy PANNs sound classifiers with PaddlePaddle',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['paddle_soundcls', 'paddle_soundcls.*']),
    package_data={'paddle_soundcls': ['data/*.csv']},
    python_requires='>=3.9',
    # PaddlePaddle comes from the `cpu` extra or from the user's own `paddlepaddle-gpu`
    # install: both provide the `paddle` module, so neither can be a hard requirement.
    install_requires=[
        'paddle2onnx>=2.0',
        'onnx',
        'onnxruntime',
        'soundfile',
        'visualdl',
        'numpy',
        'tqdm',
        'matplotlib',
        'ml_dtypes',  # imported by onnxruntime.quantization, which does not declare it
    ],
    extras_require={
        'cpu': ['paddlepaddle>=3.0'],
        'test': ['pytest', 'scikit-learn', 'librosa>=0.10'],
    },
    entry_points={'console_scripts': ['paddle-soundcls=paddle_soundcls.cli:main']},
)
