"""A batch job on disk: which files, where their outputs go, what is done.

    JOB_DIR/job.json          the files, their fingerprints, outputs and state (rewritten atomically)
    JOB_DIR/loras/FP.lora     pass one's result per file, keyed by the file's fingerprint

A file's state moves pending -> analysed -> done. A restart skips done files whose output exists and
reuses a cached LoRA, so killing a batch and running the same command again continues where it stopped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..engine.errors import HypersrError
from ..engine.files import atomic_write, refuse_same_file

VIDEO_SUFFIXES = {".mkv", ".mp4", ".mov", ".avi", ".webm", ".m4v", ".ts", ".m2ts", ".mpg", ".mpeg", ".wmv", ".flv", ".y4m"}
JOB_VERSION = 1


def job_settings(preset: str | None, refine: int, device: str | None, ffmpeg: str | None, ffmpeg_args: str, source_kind: str | None = None) -> dict:
    """What a job is made with (recorded in job.json; a run with other settings starts the job again).
    `ffmpeg`: the executable to encode with (default: the one on PATH, else imageio-ffmpeg's)."""
    from ..engine import preset_registry
    from ..engine.analyse import checked_refine, checked_source_kind
    from ..ffmpeg_filter.tool import ffmpeg_executable

    p = preset_registry.get(preset)
    refine = checked_refine(p, refine)  # said before the first job, not in each
    checked_source_kind(p, refine, source_kind)
    settings = {"preset": p.name, "refine": refine, "device": device, "ffmpeg": ffmpeg_executable(ffmpeg), "ffmpeg_args": ffmpeg_args}
    if source_kind is not None:  # only then: a job recorded before the option existed keeps its settings
        settings["source_kind"] = source_kind
    return settings


def file_fingerprint(path: Path) -> str:
    """Content identity of a video file, cheap for large files: its size and its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()[:32]


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their video files, sorted) and glob patterns -> a list of files, in order, once each."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(m) for m in glob.glob(item) if Path(m).is_file())
            if not found:
                raise HypersrError(f"input {item} matches no file")
        files += [f for f in found if f.resolve() not in {g.resolve() for g in files}]
    if not files:
        raise HypersrError("no video files to process in " + " ".join(inputs))
    return files


def output_path(template: str, src: Path) -> Path:
    """The output template's fields: {stem} (name without suffix), {name}, {dir} (the input's folder)."""
    try:
        return Path(template.format(stem=src.stem, name=src.name, dir=str(src.parent)))
    except (KeyError, IndexError, ValueError) as e:
        raise HypersrError(f"output template {template!r} is not valid ({e}); use the fields {{stem}}, {{name}}, {{dir}}") from None


@dataclass
class Entry:
    source: str
    output: str
    fingerprint: str
    state: str = "pending"  # pending, analysed, done
    frames: int | None = None
    seconds: dict = field(default_factory=dict)  # pass_one, pass_two


@dataclass
class Job:
    directory: Path
    settings: dict
    entries: list[Entry]

    @property
    def path(self) -> Path:
        return self.directory / "job.json"

    def lora_path(self, entry: Entry) -> Path:
        return self.directory / "loras" / f"{entry.fingerprint}.lora"

    def save(self) -> None:
        text = json.dumps({"version": JOB_VERSION, "settings": self.settings, "entries": [asdict(e) for e in self.entries]}, indent=1)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def run(self, process: Callable[[Entry], None], desc: str, errors: tuple[type[BaseException], ...] = (HypersrError,)) -> Job:
        """process(entry) for every file not done yet, in order, recording each that completes. A file that
        fails with one of `errors` is reported and the others go on; then one error names them all."""
        failed = []
        with tqdm(total=len(self.entries), unit="file", desc=desc, file=sys.stderr, position=0, dynamic_ncols=True) as bar:
            bar.update(sum(e.state == "done" for e in self.entries))
            for entry in self.entries:
                if entry.state == "done":
                    continue
                try:
                    process(entry)
                    entry.state = "done"
                    self.save()
                except errors as e:
                    failed.append(f"{entry.source}: {str(e).strip().splitlines()[0]}")
                    tqdm.write(f"hypersr batch: {failed[-1]}", file=sys.stderr)
                bar.update()
        if failed:
            raise HypersrError(f"{len(failed)} of {len(self.entries)} files failed (run the same command again to retry them): " + "; ".join(failed))
        return self

    @staticmethod
    def open(directory: Path, files: list[Path], template: str, settings: dict) -> Job:
        """The job in `directory`, continued when it holds one made with the same settings."""
        directory = directory.resolve()  # workers on other nodes or in other folders see the same paths
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "loras").mkdir(exist_ok=True)
        old: dict[tuple[str, str], Entry] = {}
        path = directory / "job.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                if saved.get("version") == JOB_VERSION and saved.get("settings") == settings:
                    old = {(e["fingerprint"], e["output"]): Entry(**e) for e in saved["entries"]}
            except (ValueError, TypeError, KeyError):
                pass  # a damaged job file: start the bookkeeping again (finished outputs are still checked)
        entries = []
        for f in files:
            fp, out = file_fingerprint(f), str(output_path(template, f).resolve())
            entry = old.get((fp, out)) or Entry(str(f.resolve()), out, fp)
            entry.source = str(f.resolve())
            if entry.state == "done" and not Path(entry.output).exists():
                entry.state = "analysed"  # its output was removed since: make it again
            entries.append(entry)
        outs = [e.output for e in entries]
        if len(set(outs)) != len(outs):
            raise HypersrError(f"the output template {template!r} gives two inputs the same output; include {{stem}} or {{dir}}")
        for e in entries:
            refuse_same_file(e.output, *(f.source for f in entries))
        job = Job(directory, settings, entries)
        job.save()
        return job
