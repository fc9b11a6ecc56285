"""The suite runs real tools: ffmpeg must be on PATH."""

import shutil

import pytest


@pytest.fixture(scope="session", autouse=True)
def _needs_ffmpeg():
    if shutil.which("ffmpeg") is None:
        pytest.exit("the tests need a real ffmpeg on PATH (apt-get install ffmpeg); .ci/run installs it", returncode=2)
