"""ffmpeg processes of a batch: the final encode (the user's encoder arguments; audio, subtitles,
chapters and metadata copied from the source) and lossless segments. Outputs are written under a
hidden partial name and renamed when ffmpeg succeeded, so a final name never holds half a file."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..engine.errors import HypersrError

Y4M_STDIN = ["-f", "yuv4mpegpipe", "-i", "-"]


def encode_command(ffmpeg: str, source: str, target: Path, ffmpeg_args: str, video: list[str] = Y4M_STDIN) -> list[str]:
    """ffmpeg reading the upscaled video (default: y4m on stdin), everything else from the source file."""
    return [ffmpeg, "-nostdin", "-v", "error", *video, "-i", source,
            "-map", "0:v:0", "-map", "1:a?", "-map", "1:s?", "-map_metadata", "1", "-map_chapters", "1",
            "-c:a", "copy", "-c:s", "copy", *shlex.split(ffmpeg_args), "-y", str(target)]


def segment_command(ffmpeg: str, target: Path) -> list[str]:
    """ffmpeg writing y4m from stdin losslessly (FFV1), for segments joined later."""
    return [ffmpeg, "-nostdin", "-v", "error", *Y4M_STDIN, "-c:v", "ffv1", "-y", str(target)]


def partial_path(output: Path) -> Path:
    """Where an output is written until it is complete (same folder and suffix, so ffmpeg picks the muxer)."""
    return output.with_name(f".{output.stem}.hypersr-partial{output.suffix}")


def run_ffmpeg(command: list[str], final: Path, feed: Callable | None = None) -> None:
    """Run ffmpeg writing partial_path(final) (the last entry of `command`), feeding its stdin with
    feed(stdin) when given; rename to `final` on success. Otherwise a one-line error with ffmpeg's last
    message, and no partial file left."""
    partial = Path(command[-1])
    proc = subprocess.Popen(command, stdin=subprocess.PIPE if feed else subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if feed:
            try:
                feed(proc.stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg stopped reading: its exit status and message say why
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise HypersrError(f"ffmpeg failed writing {final.name}: {err.splitlines()[-1] if err else 'exit ' + str(proc.returncode)}")
        partial.replace(final)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        partial.unlink(missing_ok=True)
