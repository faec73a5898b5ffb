"""Fixtures of the fhirlake end-to-end suite.

- fhirlake_bin:    path of the binary ($FHIRLAKE_BIN or <repo>/build/fhirlake); FAILS (never skips)
                   when it is missing. FHIRLAKE_E2E_COPY_BIN=1 runs a private copy of it (safe from
                   rebuilds and from `pkill fhirlake` run by others during the suite).
- server_factory:  start(data_dir=None, extra_args=()) -> ServerProcess (a running server on a free
                   loopback port, /healthz answered 200); every server it started is stopped with
                   SIGTERM at teardown, and teardown fails unless it exits 0 within 15 s.
- server:          one ServerProcess from server_factory on a fresh data dir (.base, .url,
                   .datastore_id, .data_dir, .proc).
- http:            a keep-alive requests session (no proxies, default timeout).
- sample:          the sample folder parsed in Python (load order, urn map, expected content).
- loaded_sample:   session-wide: `fhirlake load` of the sample into a fresh data dir, then a server
                   on it; .load (LoadResult), .server (ServerProcess), .sample.
"""

from __future__ import annotations

import os
import shutil

import pytest

from fhirlake_helpers import (SAMPLE_DIR, ServerProcess, Sample, Session, binary_path, run_load)


def _require_binary():
    path = binary_path()
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"fhirlake binary not found or not executable at {path} "
                    f"(build it first, or set FHIRLAKE_BIN to its path)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def fhirlake_bin(tmp_path_factory):
    path = _require_binary()
    if os.environ.get("FHIRLAKE_E2E_COPY_BIN") == "1":
        # Run a private copy: immune to a rebuild during the run and to name-based kills
        # (`pkill fhirlake`) by other people working on the same machine.
        copy = tmp_path_factory.mktemp("bin") / "server-under-test"
        shutil.copy2(path, copy)
        return copy
    return path


class _Factory:
    def __init__(self, binary, tmp_factory, name):
        self.binary = binary
        self.tmp_factory = tmp_factory
        self.name = name
        self.started: list[ServerProcess] = []

    def __call__(self, data_dir=None, extra_args=()):
        if data_dir is None:
            data_dir = self.tmp_factory.mktemp(f"{self.name}-data")
        log_dir = self.tmp_factory.mktemp(f"{self.name}-logs")
        srv = ServerProcess(self.binary, data_dir, log_dir, extra_args)
        self.started.append(srv)
        return srv.start()

    def stop_all(self):
        errors = []
        for srv in self.started:
            if srv.proc is None:
                continue  # stopped (and checked) by the test itself
            try:
                srv.stop()
            except AssertionError as e:
                errors.append(str(e))
        if errors:
            pytest.fail("server teardown: " + "\n".join(errors), pytrace=False)


@pytest.fixture
def server_factory(fhirlake_bin, tmp_path_factory):
    f = _Factory(fhirlake_bin, tmp_path_factory, "srv")
    yield f
    f.stop_all()


@pytest.fixture
def server(server_factory):
    return server_factory()


@pytest.fixture(scope="module")
def module_server_factory(fhirlake_bin, tmp_path_factory):
    f = _Factory(fhirlake_bin, tmp_path_factory, "modsrv")
    yield f
    f.stop_all()


@pytest.fixture
def http():
    s = Session()
    yield s
    s.close()


@pytest.fixture(scope="session")
def sample():
    assert SAMPLE_DIR.is_dir(), f"sample folder missing: {SAMPLE_DIR}"
    return Sample(SAMPLE_DIR)


class LoadedSample:
    def __init__(self, load, server, sample):
        self.load = load
        self.server = server
        self.sample = sample


@pytest.fixture(scope="session")
def loaded_sample(fhirlake_bin, tmp_path_factory, sample):
    data_dir = tmp_path_factory.mktemp("sample-data")
    load = run_load(fhirlake_bin, data_dir, [SAMPLE_DIR])
    f = _Factory(fhirlake_bin, tmp_path_factory, "sample-srv")
    try:
        srv = f(data_dir=data_dir)
    except AssertionError as e:
        pytest.fail(f"server on the loaded sample did not start: {e}\nload:\n{load.describe()}", pytrace=False)
    yield LoadedSample(load, srv, sample)
    f.stop_all()
