"""Smoke test of the benchmark harness: `bench/run` on 100 patients (no S3, latency or profile) exits 0 and
writes a results.json with the expected keys and positive figures (docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from fhirlake_helpers import REPO, binary_path

BENCH = REPO / "bench" / "run"
HANG_GUARD_S = 600  # kills a hung run; not a performance limit


def _positive(d: dict, *path):
    v = d
    for k in path:
        assert isinstance(v, dict) and k in v, f"results.json: missing {'.'.join(map(str, path))} (at {k!r})"
        v = v[k]
    assert isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, \
        f"results.json: {'.'.join(map(str, path))} = {v!r}, expected a positive number"
    return v


def _matplotlib_available() -> bool:
    r = subprocess.run(["/usr/bin/python3", "-c", "import matplotlib"], capture_output=True)
    return r.returncode == 0


def test_bench_run_smoke(tmp_path):
    binary = binary_path()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"fhirlake binary not found at {binary} (build it first, or set FHIRLAKE_BIN)", pytrace=False)
    assert os.access(BENCH, os.X_OK), f"{BENCH} is not executable"
    out = tmp_path / "results"
    # --no-build: the suite's binary is benchmarked as is; --no-install: never apt-get from a test.
    cmd = [str(BENCH), "--sizes", "100", "--reps", "1", "--skip-s3", "--no-latency", "--no-profile",
           "--no-build", "--no-install", "--bin", str(binary), "--out", str(out)]
    # The timeout only keeps a hung run from hanging the suite; how long it takes is the benchmark's business, never
    # a test's (the machine is shared and noisy).
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=REPO)
    assert r.returncode == 0, f"bench/run exited {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-5000:]}"

    res = json.loads((out / "results.json").read_text())
    for key in ("schema", "started", "finished", "command", "machine", "sizes", "targets", "reps"):
        assert key in res, f"results.json: no {key!r}"
    m = res["machine"]
    _positive(m, "nproc")
    _positive(m, "mem_total_bytes")
    for key in ("cpu_model", "kernel", "data_dir_fs", "fhirlake_version"):
        assert m.get(key), f"results.json: machine.{key} missing or empty: {m.get(key)!r}"
    assert res["failures"] == [], res["failures"]

    s = res["sizes"]["100"]
    assert s["patients"] == 100
    _positive(s, "generate", "resources")
    lc = s["load_cli"]
    assert _positive(lc, "resources") == s["generate"]["resources"]
    _positive(lc, "seconds")
    _positive(lc, "resources_per_s")
    _positive(lc, "peak_rss_bytes")
    lh = s["load_http"]
    assert lh["errors"] == 0
    assert lh["bundles"] == lh["bundles_total"] == 100
    # every resource arrives once: the Bundles' entries plus the shared ndjson
    assert _positive(lh, "resources") + _positive(lh, "shared_resources") == s["generate"]["resources"]
    _positive(lh, "resources_per_s")
    _positive(lh, "server_peak_rss_bytes")

    e = s["export"]
    _positive(e, "server_peak_rss_bytes")
    _positive(e, "server_max_sampled_rss_bytes")
    for level in ("system", "patient", "group"):
        assert len(e[level]["runs"]) == 1
        assert e[level]["runs"][0]["status"] == "COMPLETED"
        for key in ("seconds", "resources", "bytes", "resources_per_s", "mb_per_s", "raw_copy_seconds",
                    "ratio_to_raw_copy"):
            _positive(e[level], "median", key)
    assert e["system"]["median"]["resources"] == s["generate"]["resources"]
    assert 0 < e["group"]["median"]["resources"] < e["system"]["median"]["resources"]
    assert s["s3"] == {"skipped": "--skip-s3"}
    assert "latency" not in res and "profile" not in res

    names = {t["name"] for t in res["targets"]}
    assert any("system export" in n for n in names) and any("load" in n for n in names), names
    for t in res["targets"]:
        assert set(t) >= {"name", "target", "value", "met"} and t["met"] in (True, False, None), t

    assert (out / "report.md").is_file()
    assert "patients" in r.stdout and "targets:" in r.stdout, r.stdout[-2000:]
    if _matplotlib_available():
        for png in ("throughput.png", "rss.png"):
            p = out / "plots" / png
            assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{p} is not a PNG"
    # the scratch data is gone and no server is left running on it
    assert not (out / "work").exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out) not in ps, "a process started by bench/run is still running:\n" + \
        "\n".join(line for line in ps.splitlines() if str(out) in line)
