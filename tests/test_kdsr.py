"""`hypersr bench kdsr` (training/kdsr.py): the HR-aware teacher, its LR-only student and their training, at toy size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_training import tiny_pack, waves

from hypersr.engine import preset_registry
from hypersr.engine.errors import HypersrError
from hypersr.engine.lora import lora_applied
from hypersr.training import kdsr
from hypersr.training.data import ClipSampler, load_pack, quantise
from hypersr.training.degradation import TrainingDegradation


def frozen_real_x2():
    base = preset_registry.load_model("real-x2")
    for p in base.parameters():
        p.requires_grad_(False)
    hypernet, _ = preset_registry.load_hypernet("real-x2", base)
    return base, hypernet


def clip(seed: int, frames: int = 3, side: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    from hypersr.training.degradation import apply_bi

    hr = torch.from_numpy(waves(np.random.default_rng(seed), frames, side)).permute(0, 3, 1, 2).float() / 255
    return hr, apply_bi(hr, 2)


def flat(factors) -> torch.Tensor:
    return torch.cat([(b @ a).flatten() for a, b in factors.values()])


def test_the_teacher_starts_as_the_hypernet_and_reads_hr_once_trained():
    base, hypernet = frozen_real_x2()
    teacher = kdsr.make_teacher(hypernet, base.scale).eval()
    hr, lr = clip(0)
    assert kdsr.reads_hr(teacher) and not kdsr.reads_hr(hypernet)
    with torch.no_grad():
        shipped = flat(hypernet.factors(hypernet.summarise(lr, base)))
        assert torch.allclose(flat(teacher.factors(kdsr.summarise(teacher, lr, hr, base))), shipped, atol=1e-6)
        # the HR error: the base's output against HR on the encoder's own patches, at the LR grid's size
        err = kdsr.hr_error(teacher, lr, hr, base)
        patches = teacher.encoder.patches(lr)
        assert err.shape == (patches.shape[0], 12, *patches.shape[-2:]) and err.abs().amax() > 0
        teacher.encoder.net[0].weight[:, 6:] = 0.05  # once its HR inputs have weight, another HR changes the code
        other = hr.flip(-1)
        a = kdsr.code(teacher, kdsr.summarise(teacher, lr, hr, base))
        b = kdsr.code(teacher, kdsr.summarise(teacher, lr, other, base))
        assert (a - b).abs().amax() > 1e-4
        # the student is the teacher without the HR inputs: its code is the LR part of the teacher's
        student = kdsr.drop_hr_inputs(teacher).eval()
        assert not kdsr.reads_hr(student)
        teacher.encoder.net[0].weight[:, 6:] = 0
        assert torch.allclose(kdsr.code(student, student.summarise(lr, base)), kdsr.code(teacher, kdsr.summarise(teacher, lr, hr, base)), atol=1e-5)


def test_stages_train_resume_and_score(tmp_path):
    base, hypernet = frozen_real_x2()
    pack = load_pack(tiny_pack(tmp_path / "pack.npz"))
    hp = {"clips": 1, "frames": 3, "targets": 1, "lr": 1e-3, "seed": 0, "size": 64}
    sampler = ClipSampler(pack.scenes, pack.clips, hp["frames"], hp["size"])
    hr, lr = clip(1)
    pairs = {"waves": (hr, lr)}
    val = {"pairs": pairs, "base": kdsr.base_scores(base, pairs)}
    teacher = kdsr.make_teacher(hypernet, base.scale)
    config = kdsr.stage_config(teacher, hp, 2)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items() if k.startswith(("blend.", "standardise."))}
    degrade = TrainingDegradation("real")
    assert not kdsr.train_stage(teacher, base, sampler, degrade, tmp_path / "teacher", hp, 2, val, max_minutes=1e-9)  # stops, checkpointed
    assert kdsr.load_stage(kdsr.make_teacher(hypernet, base.scale), tmp_path / "teacher", config) is None
    teacher = kdsr.make_teacher(hypernet, base.scale)  # as the same command run again: a fresh start that resumes
    assert kdsr.train_stage(teacher, base, sampler, degrade, tmp_path / "teacher", hp, 2, val)  # resumes and finishes
    log = [json.loads(line) for line in (tmp_path / "teacher" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [0, 1, 2]
    # the clean blend's head and the summary's standardisation stay as shipped
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in frozen.items())
    assert teacher.encoder.net[0].weight[:, 6:].abs().amax() > 0  # the HR inputs learnt something from zero
    loaded = kdsr.load_stage(kdsr.make_teacher(hypernet, base.scale), tmp_path / "teacher", config)
    assert torch.equal(loaded.encoder.net[0].weight, teacher.encoder.net[0].weight)
    with pytest.raises(HypersrError, match="other settings"):  # a finished run is not reused under other settings
        kdsr.load_stage(kdsr.make_teacher(hypernet, base.scale), tmp_path / "teacher", kdsr.stage_config(teacher, {**hp, "lr": 1e-4}, 2))

    # student and control: the same start and clips, so their first step differs by the distillation term alone
    teacher.eval()
    losses = {}
    for name, weight in (("control", 0.0), ("student", 1.0)):
        net = kdsr.drop_hr_inputs(teacher)
        assert kdsr.train_stage(net, base, sampler, degrade, tmp_path / name, hp, 1, val, teacher, kd_weight=weight)
        losses[name] = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()][-1]["loss"]
    with torch.no_grad():
        rng = np.random.default_rng(hp["seed"])
        first, _ = sampler.sample(rng)
        rng.choice(hp["frames"], hp["targets"], replace=False)
        lr_first, _ = degrade.clip(first, base.scale, rng)
        student = kdsr.drop_hr_inputs(teacher).eval()
        distance = torch.nn.functional.mse_loss(kdsr.code(student, student.summarise(lr_first, base)),
                                                kdsr.code(teacher, kdsr.summarise(teacher, lr_first, first, base)))
    assert distance > 0
    assert losses["student"] - losses["control"] == pytest.approx(float(distance), rel=1e-3)

    rows = kdsr.score({"teacher": teacher, "student": net}, base, {"waves": hr}, ["bi", "point-h264"], progress=lambda _: None)
    assert [(r["chain"], r["clip"]) for r in rows] == [("bi", "waves"), ("point-h264", "waves")]
    with torch.no_grad(), lora_applied(base, net.factors(net.summarise(lr, base))):
        expected = kdsr.clip_psnr(quantise(kdsr.upscale(base, lr)), hr) - rows[0]["base"]
    assert abs(rows[0]["gain"]["student"] - expected) < 1e-9  # the bi row scores the student's own LoRA on the same LR
    table = kdsr.table(rows)
    assert "| point-h264 | waves |" in table and "| student |" in table
