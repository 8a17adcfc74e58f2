"""jard: adversarial robustness distillation in JAX/Flax."""

import setuptools

setuptools.setup(
    name='jard',
    version='0.1.0',
    description='Adversarial robustness distillation in JAX/Flax: robust '
                'teachers, distilled students and a trusted attack suite.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['jard', 'jard.*']),
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.10.0',
        'flax>=0.12.0',
        'optax>=0.2.6',
        'orbax-checkpoint>=0.12.0',
        'chex>=0.1.90',
        'tensorflow-datasets>=4.9.9',
        # TFDS imports it when it downloads and prepares a dataset.
        'importlib_resources>=6.0',
        'ml-collections>=1.1.0',
        'clu>=0.0.12',
        'absl-py>=2.1.0',
        'numpy>=1.26',
        'pillow>=10.0',
        'tqdm>=4.66',
        'matplotlib>=3.8',
    ],
    extras_require={
        # The notebooks run in the suite (tests/notebooks_test.py).
        'test': ['pytest>=8.0', 'pytest-xdist>=3.5', 'nbclient>=0.10',
                 'nbformat>=5.10', 'ipykernel>=6.29'],
        'torch': ['torch>=2.13.0'],
        'notebooks': ['jupyter>=1.0', 'nbclient>=0.10', 'nbformat>=5.10',
                      'ipykernel>=6.29'],
    },
)
