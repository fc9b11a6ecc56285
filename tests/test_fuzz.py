"""Seeded fuzzing of what hypersr reads from users' files: y4m streams (header parser and frame reader),
LoRA files and model cards. Valid files are mutated (bytes, tokens, JSON values, safetensors headers);
every result must be a valid read or a HypersrError of one line: no other exception, no hang, and no
allocation that follows a header's claim rather than the file's size.

    make test                                      a few hundred cases of each kind
    .venv/bin/python -m pytest tests/test_fuzz.py --fuzz-cases 20000 --fuzz-seed 7
A failure names the seed and case, and the mutation that made it, so it can be replayed.
"""

from __future__ import annotations

import io
import json
import random
import time
import tracemalloc

import numpy as np
import pytest
from helpers import preset_lora

from hypersr.engine import preset_registry
from hypersr.engine.errors import HypersrError
from hypersr.engine.lora import load_lora, save_lora
from hypersr.ffmpeg_filter.y4m import MAX_HEADER, MAX_OUTPUT_HEADER, Y4MHeader, Y4MReader, Y4MWriter

ALLOCATION_LIMIT = 48 << 20  # bytes one case may hold at its peak (the reader reads frames in 16 MiB chunks)
TIME_LIMIT_S = 5.0  # per case: a hang would show far beyond this

INTERESTING_NUMBERS = ["0", "-1", "1", "2", "3", "7", "255", "256", "65535", "65536", "2147483647", "2147483648",
                       "4294967296", "99999999999999999999", "1e9", "nan", "inf", "-0", "+5", "1_0", "0x10", "", "１"]


# -- seeds: valid files of each kind ---------------------------------------------------------------

def y4m_seeds(folder) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for header in (Y4MHeader(17, 11, "420jpeg"), Y4MHeader(8, 6, "422p10", (30000, 1001), "t", (1, 1), "LIMITED"),
                   Y4MHeader(5, 3, "mono"), Y4MHeader(6, 4, "444p16", extra=("VENDOR=x",)), Y4MHeader(33, 17, "420mpeg2", interlace="t")):
        buf = io.BytesIO()
        writer = Y4MWriter(buf, header)
        for _ in range(3):
            writer.write([rng.integers(0, 1 << min(header.bits, 16), shape, dtype=header.dtype) for shape in header.plane_shapes()])
        out.append(buf.getvalue())
    return out


def lora_seed(folder) -> bytes:
    path = folder / "seed.lora"
    save_lora(preset_lora(preset_registry.get("fast-x2"), clip_fingerprint="f" * 16, made_by={"tool": "fuzz"}), path)
    return path.read_bytes()


def card_seed() -> bytes:
    return preset_registry.get("real-x2").card_path.read_bytes()  # the richest card: hypernet, clean blend, refine_refused


# -- mutations ---------------------------------------------------------------------------------------

def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    kind = rng.choice(["flip", "set", "insert", "delete", "truncate", "duplicate", "splice"])
    i = rng.randrange(len(b)) if b else 0
    if kind == "flip" and b:
        b[i] ^= 1 << rng.randrange(8)
    elif kind == "set" and b:
        b[i] = rng.choice([0, 0x0A, 0x20, 0x30, 0x39, 0x3A, 0x7F, 0xFF])
    elif kind == "insert":
        b[i:i] = rng.choice([b"\n", b" ", b"\x00", b"9" * rng.randint(1, 30), b"FRAME\n", b"YUV4MPEG2 ", rng.randbytes(rng.randint(1, 8))])
    elif kind == "delete":
        del b[i : i + rng.randint(1, 16)]
    elif kind == "truncate":
        del b[i:]
    elif kind == "duplicate":
        j = rng.randrange(len(b) + 1)
        b[j:j] = b[i : i + rng.randint(1, 64)]
    elif kind == "splice":
        b[i : i + rng.randint(1, 8)] = rng.randbytes(rng.randint(0, 8))
    return bytes(b), f"{kind}@{i}"


def mutate_y4m(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if b"\n" not in data or b" " not in data.split(b"\n", 1)[0]:
        out, how = mutate_bytes(data, rng)
        return out, f"bytes:{how}"
    header, rest = data.split(b"\n", 1)
    tokens = header.decode("latin-1").split(" ")
    kind = rng.choice(["value", "value", "drop", "add", "long", "bytes", "bytes"])
    if kind == "value":
        i = rng.randrange(1, len(tokens))
        key = tokens[i][:1] or "X"
        value = rng.choice(INTERESTING_NUMBERS)
        tokens[i] = key + (value if key in "WH" else rng.choice([f"{value}:1", f"1:{value}", value, f"{value}:{value}:1",
                                                                  "420p8", "411", "444alpha", "mono7", "?", "m", "p", "Z"]))
    elif kind == "drop":
        del tokens[rng.randrange(1, len(tokens))]
    elif kind == "add":
        tokens.insert(rng.randrange(1, len(tokens) + 1), rng.choice(["XFOO=1", "Ip", "It", "Im", "C420", "W8", "H4", "F0:0", "A0:0",
                                                                     "XCOLORRANGE=FULL", "XYSCSS=444", "Q1", "X"]))
    elif kind == "long":  # a header at or beyond what the reader and FFmpeg take
        pad = MAX_HEADER - len(header) - 1 + rng.choice([-40, -3, -2, -1, 0, 1, 2, 50])
        tokens.append("X" + "P" * max(pad - 1, 0))
    else:
        out, how = mutate_bytes(data, rng)
        return out, f"bytes:{how}"
    return " ".join(tokens).encode("latin-1", "replace") + b"\n" + rest, f"{kind}:{' '.join(tokens)[:120]}"


def mutate_lora(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    try:
        n = int.from_bytes(data[:8], "little")
        header, payload = json.loads(data[8 : 8 + n]), data[8 + n :]
        assert isinstance(header, dict) and all(isinstance(v, dict) and "data_offsets" in v for k, v in header.items() if k != "__metadata__")
    except (ValueError, AssertionError):  # an earlier step broke the header: go on at the byte level
        out, how = mutate_bytes(data, rng)
        return out, f"bytes:{how}"
    kind = rng.choice(["dtype", "shape", "offsets", "metadata", "metadata", "header-bytes", "payload", "bytes"])
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    if kind == "dtype":
        header[name]["dtype"] = rng.choice(["F8_E4M3", "F8_E5M2", "F16", "BF16", "F64", "I8", "U8", "I32", "I64", "BOOL", "C64", "F4", "X"])
        sizes = {"F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "C64": 8}
        nbytes = sizes.get(header[name]["dtype"], 4)
        try:  # keep the offsets consistent where an earlier step left them so: the dtype is then the only fault
            start = header[name]["data_offsets"][0]
            header[name]["data_offsets"][1] = start + nbytes * int(np.prod(header[name]["shape"]))
        except (IndexError, TypeError, KeyError, ValueError):
            pass
    elif kind == "shape":
        header[name]["shape"] = rng.choice([[], [0], [4], [1, 1, 1], [10**12, 1], [-1, 4], header[name]["shape"][::-1], "x"])
    elif kind == "offsets":
        header[name]["data_offsets"] = rng.choice([[0, 0], [0, 10**15], [5, 3], [-8, 8], [0], "x"])
    elif kind == "metadata":
        meta = header.setdefault("__metadata__", {})
        key = rng.choice(["format", "format_version", "preset", "base_sha256", "scale", "rank", "strength", "layers", "made_by", "clip_fingerprint"])
        meta[key] = rng.choice(["", "x", "1", "0", "-1", "1e309", "nan", "inf", "[]", "{}", "null", "[\"head\"]", "\"s\"", "99999999999999999999",
                                "fast-x4", json.dumps(names[:1]), "[1, 2]", "{\"a\": ["])
        if rng.random() < 0.2:
            meta.pop(key)
    elif kind == "header-bytes":
        text = json.dumps(header).encode()
        text, how = mutate_bytes(text, rng)
        return len(text).to_bytes(8, "little") + text + payload, f"header-bytes:{how}"
    elif kind == "payload":
        p = bytearray(payload)
        for _ in range(rng.randint(1, 8)):  # NaN, inf and huge float32 patterns
            i = rng.randrange(0, len(p) - 4, 4)
            p[i : i + 4] = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\x7f\x7f", b"\x00\x00\x00\x00"])
        payload = bytes(p)
    else:
        out, how = mutate_bytes(data, rng)
        return out, f"bytes:{how}"
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + payload, f"{kind}:{name}"


def mutate_card(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.3:
        out, how = mutate_bytes(data, rng)
        return out, f"bytes:{how}"
    try:
        card = json.loads(data)
    except ValueError:
        card = None
    if not isinstance(card, dict):
        out, how = mutate_bytes(data, rng)
        return out, f"bytes:{how}"
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))

    walk(card, ())
    path = rng.choice(paths[1:])
    parent = card
    for k in path[:-1]:
        parent = parent[k]
    if rng.random() < 0.3:
        del parent[path[-1]]
        return json.dumps(card).encode(), f"delete:{'.'.join(path)}"
    value = rng.choice([None, 0, -1, 10**30, 1.5, float("nan"), "", "x", [], {}, [1], "../../etc/passwd", "a" * 64, True])
    parent[path[-1]] = value
    return json.dumps(card).encode(), f"set:{'.'.join(path)}={value!r}"


# -- what counts as a read ---------------------------------------------------------------------------

def read_y4m(path) -> None:
    with open(path, "rb") as f:
        reader = Y4MReader(f, "fuzz.y4m")
        h = reader.header
        assert max(h.width, h.height) <= 16384
        line = h.resized(h.width * 4, h.height * 4).line()  # what hypersr would write, x4: FFmpeg and hypersr read it back
        assert len(line) <= MAX_OUTPUT_HEADER, line
        back = Y4MHeader.parse(line[:-1])
        assert (back.width, back.height, back.chroma, back.interlace) == (h.width * 4, h.height * 4, h.chroma, h.interlace)
        for _ in range(8):
            planes = reader.read()
            if planes is None:
                break
            assert [p.shape for p in planes] == h.plane_shapes()


def read_lora(path) -> None:
    lora = load_lora(path)
    preset_registry.load_model("fast-x2", lora)  # the checks against the model too


def read_card(path) -> None:
    card = preset_registry.read_card(path)
    p = preset_registry.Preset("fuzz", card, path, path.with_suffix(".safetensors"))
    (p.scale, p.window, p.min_size, p.refine_refused, p.files())
    if card.weights is not None:
        assert len(p.sha256) == 64


KINDS = {"y4m": (y4m_seeds, mutate_y4m, read_y4m), "lora": (lambda folder: [lora_seed(folder)], mutate_lora, read_lora),
         "card": (lambda folder: [card_seed()], mutate_card, read_card)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_fuzz(kind, tmp_path, request):
    cases, seed = request.config.getoption("--fuzz-cases"), request.config.getoption("--fuzz-seed")
    make_seeds, mutate, read = KINDS[kind]
    seeds = make_seeds(tmp_path)
    for s in seeds:  # the seeds themselves are valid
        (tmp_path / "seed").write_bytes(s)
        read(tmp_path / "seed")
    rng = random.Random(f"{seed}-{kind}")
    outcomes = {"read": 0, "refused": 0}
    for case in range(cases):
        data, how = rng.choice(seeds), []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data, step = mutate(data, rng)
            how.append(step)
        path = tmp_path / f"case.{kind}"
        path.write_bytes(data)
        where = f"--fuzz-seed {seed}, {kind} case {case}: {' | '.join(how)}"
        tracemalloc.start()
        start = time.monotonic()
        try:
            read(path)
            outcomes["read"] += 1
        except HypersrError as e:
            assert "\n" not in str(e) and str(e).strip(), f"{where}: not one line: {e!r}"
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001  (anything else is the finding)
            pytest.fail(f"{where}: {type(e).__name__}: {e}")
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.monotonic() - start < TIME_LIMIT_S, f"{where}: took {time.monotonic() - start:.1f} s"
        assert peak < ALLOCATION_LIMIT + 4 * len(data), f"{where}: allocated {peak >> 20} MiB for a {len(data)}-byte file"
    # The mutations must reach both sides: a fuzzer that only ever breaks (or never breaks) the files tests little.
    assert outcomes["read"] > 0 and outcomes["refused"] > cases // 10, outcomes
