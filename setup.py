"""Maps the client's top-level folders onto one installed ``srserve`` namespace.

models/ -> srserve.models, export/ -> srserve.export, service/ -> srserve.service,
train/ -> srserve.train; srserve/ holds the CLI, the pipeline and evaluation.
"""
from setuptools import find_packages, setup

PACKAGE_DIRS = {
    "srserve": "srserve",
    "srserve.models": "models",
    "srserve.export": "export",
    "srserve.service": "service",
    "srserve.train": "train",
}

packages = []
for package, folder in PACKAGE_DIRS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=PACKAGE_DIRS, package_data={"srserve.train": ["configs/*.yaml"],
                                                                  "srserve.service": ["web/*"]})
