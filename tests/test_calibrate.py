"""Calibration (contractssm.planner.calibrate): measured rates, storage and profile lookup."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch

import contractssm.planner.calibrate as calibrate_module
from contractssm.planner.calibrate import calibrate, profile_for, profile_name
from contractssm.planner.profile import (
    SIZE_CLASSES,
    MachineProfile,
    default_profile,
    load_profile,
    profile_path,
    save_profile,
)


@pytest.fixture(scope="module")
def measured() -> tuple[MachineProfile, float]:
    start = time.perf_counter()
    profile = calibrate(budget_s=3)
    return profile, time.perf_counter() - start


def _rates(profile: MachineProfile) -> dict[str, float]:
    rates = {
        f"matmul_gflops[{kind}][{cls}]": profile.matmul_gflops[kind][cls]
        for kind in ("real", "complex")
        for cls in SIZE_CLASSES
    }
    rates.update(
        fft_gflops=profile.fft_gflops,
        elementwise_gbps=profile.elementwise_gbps,
        cache_gbps=profile.cache_gbps,
        transcendental_gelems=profile.transcendental_gelems,
        launch_us=profile.launch_us,
        fresh_memory_gbps=profile.fresh_memory_gbps,
    )
    return rates


def test_calibrate_measures_every_rate(measured):
    profile, elapsed = measured
    rates = _rates(profile)
    print(f"\ncalibrate(budget_s=3) took {elapsed:.2f} s; profile {profile.name!r}")
    for name, value in rates.items():
        print(f"  {name:32s} {value:12.4g}")
    assert profile.calibrated is True
    assert profile.name == profile_name("cpu", torch.float32)
    assert profile.name.startswith("cpu:") and profile.name.endswith(":float32")
    for name, value in rates.items():
        assert math.isfinite(value) and value > 0, (name, value)


def test_calibrate_respects_budget(measured):
    _, elapsed = measured
    print(f"\nelapsed {elapsed:.2f} s for a 3 s budget")
    assert elapsed < 10.0


def test_calibrated_profile_round_trips(measured, tmp_path):
    profile, _ = measured
    path = profile_path(str(tmp_path), profile.name)
    save_profile(profile, path)
    loaded = load_profile(path)
    print(f"\nstored {os.path.basename(path)}: {loaded}")
    assert loaded == profile
    assert loaded.key == profile.key


def _fake_profile(name: str) -> MachineProfile:
    mm = {kind: dict.fromkeys(SIZE_CLASSES, 1.0) for kind in ("real", "complex")}
    return MachineProfile(name=name, matmul_gflops=mm, fft_gflops=1.0, calibrated=True)


def test_profile_for_default_then_stored(tmp_path):
    name = profile_name("cpu")
    found = profile_for("cpu", cache_dir=str(tmp_path))
    print(f"\nnothing stored -> {found.name}")
    assert found == default_profile("cpu")

    stored = _fake_profile(name)
    save_profile(stored, profile_path(str(tmp_path), name))
    found = profile_for("cpu", cache_dir=str(tmp_path))
    print(f"stored -> {found}")
    assert found == stored


def test_profile_for_calibrates_and_saves_when_asked(tmp_path, monkeypatch):
    calls = []

    def fake_calibrate(device, dtype=torch.float32, budget_s=12.0):
        calls.append((str(device), dtype))
        return _fake_profile(profile_name(device, dtype))

    monkeypatch.setattr(calibrate_module, "calibrate", fake_calibrate)
    found = profile_for("cpu", cache_dir=str(tmp_path), calibrate_if_missing=True)
    path = profile_path(str(tmp_path), profile_name("cpu"))
    print(f"\ncalibrations: {calls}; saved: {os.path.exists(path)}")
    assert calls == [("cpu", torch.float32)]
    assert found == _fake_profile(profile_name("cpu"))
    assert load_profile(path) == found

    again = profile_for("cpu", cache_dir=str(tmp_path), calibrate_if_missing=True)
    assert again == found and len(calls) == 1  # stored now: no second calibration


def test_profile_for_other_dtype_is_a_separate_entry(tmp_path):
    save_profile(
        _fake_profile(profile_name("cpu")), profile_path(str(tmp_path), profile_name("cpu"))
    )
    found = profile_for("cpu", torch.float64, cache_dir=str(tmp_path))
    print(f"\nfloat64 lookup -> {found.name}")
    assert found == default_profile("cpu")


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CONTRACTSSM_CACHE_DIR", raising=False)
    monkeypatch.delenv("CONTRACTSSM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    local = calibrate_module.default_cache_dir
    seen = {"xdg": local()}
    monkeypatch.setenv("CONTRACTSSM_CACHE_DIR", str(tmp_path / "explicit"))
    seen["explicit"] = local()
    monkeypatch.setenv("CONTRACTSSM_CACHE", "off")
    seen["off"] = local()
    print(f"\n{seen}")
    assert seen["xdg"] == str(tmp_path / "xdg" / "contractssm")
    assert seen["explicit"] == str(tmp_path / "explicit")
    assert seen["off"] is None
