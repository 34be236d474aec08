"""nnfund_spark: deep-learning fundamentals as distributed training jobs on Spark.

install_requires holds ranges wide enough for the Databricks ML runtimes (TF 2.14, Python 3.10)
and for our own pinned stack; exact versions live only in constraints.txt.
Horovod is not listed: it is compiled against the installed TensorFlow (see the Makefile) or
comes preinstalled with the cluster runtime.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent


class BuildWithConf(build_py):
    """Ship the repository's conf/ inside the wheel as nnfund_spark/conf, so `-c mnist` works
    wherever the wheel is installed (spark-submit --py-files, Databricks wheel tasks)."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "nnfund_spark" / "conf"
        sources = sorted((HERE / "conf").rglob("*.yaml"))
        if not sources:
            raise SystemExit(f"setup.py: no conf/*.yaml under {HERE}: a wheel without them "
                             f"could not run `-c mnist`; build from the repository or its sdist")
        for source in sources:
            if "databricks" in source.parts:  # the bundle is deployment config, not a job config
                continue
            destination = target / source.relative_to(HERE / "conf")
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read_bytes())
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (HERE / "nnfund_spark" / "__init__.py").read_text()).group(1)

setup(
    name="nnfund_spark",
    version=VERSION,
    description="Deep-learning fundamentals as reproducible distributed jobs: "
                "Spark + Petastorm data prep, Horovod-on-Spark Keras training, MLflow tracking.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.12",
    packages=find_packages(include=["nnfund_spark", "nnfund_spark.*"]),
    cmdclass={"build_py": BuildWithConf},
    install_requires=[
        "numpy>=1.23,<2",
        "pandas>=1.5,<3",
        "pyarrow>=8,<11",          # Horovod's Spark estimator breaks on >= 11, Petastorm on >= 15
        "petastorm>=0.12.1,<0.14",
        "mlflow>=2.9,<4",
        "pyyaml>=5.4",
        "pillow>=10.3",  # opens 16-bit grayscale PNG as I;16 (before: mode I, see images.py)
        "matplotlib>=3.5",
        "opencv-python-headless>=4.5",
        "scikit-learn>=1.0",       # the built-in `digits` source
        "psutil>=5",               # the launcher's MPI teardown watch (Horovod needs it too)
    ],
    extras_require={
        # Pick one TensorFlow build. Databricks ML runtimes ship TF already: install with no extra.
        "cpu": ["tensorflow-cpu>=2.12,<2.16"],
        "gpu": ["tensorflow>=2.12,<2.16"],
        # Spark clusters and Databricks runtimes provide PySpark; plain machines get it here.
        "spark": ["pyspark>=3.3,<4"],
        # Datasets on S3 (s3:// and s3a:// URIs); gs:// needs gcsfs, abfss:// adlfs instead.
        "s3": ["s3fs>=2023.1"],
        # moto stands in for S3 in the tests; its server runs on Flask. pytest-timeout ends a
        # stuck test (pytest.ini).
        "test": ["pytest>=7", "pytest-timeout>=2.1", "databricks-sdk>=0.20,<1",
                 "s3fs>=2023.1", "moto[s3]>=5", "flask", "flask-cors"],
    },
    entry_points={
        "console_scripts": [
            "nnfund-spark=nnfund_spark.cli:run",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
    ],
)
