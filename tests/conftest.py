"""The suite runs real tools. ffmpeg: the system's when it is on PATH, else the static binary of the
imageio-ffmpeg wheel (a dev dependency), put on PATH for the tests and the processes they start."""

import os
import shutil

import pytest


@pytest.fixture(scope="session", autouse=True)
def _ffmpeg_on_path(tmp_path_factory):
    if shutil.which("ffmpeg") is None:
        try:
            import imageio_ffmpeg
        except ImportError:
            if os.environ.get("HYPERSR_TESTS_WITHOUT_FFMPEG"):  # a lent GPU's bare machine (training/gpu_session.sh): its tests need none
                yield
                return
            pytest.exit("the tests need ffmpeg: apt-get install ffmpeg, or pip install imageio-ffmpeg", returncode=2)
        folder = tmp_path_factory.mktemp("ffmpeg-bin")
        (folder / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
        os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    yield


def pytest_addoption(parser):
    parser.addoption("--fuzz-cases", type=int, default=300, help="mutated files per kind in tests/test_fuzz.py (default 300)")
    parser.addoption("--fuzz-seed", type=int, default=0, help="the fuzz run's seed (default 0)")
