// Failpoints: named places in the code where a test can make the process die, pause or fail, to prove that a
// crash or an error at that exact moment leaves every job and file in a truthful state. Compiled in, off by
// default, and a single relaxed atomic load when off.
//
//   FHIRLAKE_FAILPOINTS="export.after_sink_commit=kill;export.plan=pause"  (';'-separated NAME=ACTION)
//   FHIRLAKE_FAILPOINT_DIR=/tmp/fp   (markers; default: the current directory)
//
// Actions (optionally "@N": start acting on the N-th time the point is reached, pass before that):
//   kill      write the marker file {dir}/{name}.hit, then SIGKILL the process (no cleanup, like a crash); once
//   pause     write the marker, then wait until {dir}/{name}.release exists (polled every 10 ms); every hit from
//             the N-th on (each thread that gets there waits; after the release they all pass at once)
//   error     Hit() returns an injected error Status (kUnavailable) naming the point; every hit from the N-th on
//   sleep(MS) write the marker, sleep MS milliseconds; once
// The marker lets a test assert that the named point was really reached (a renamed or dead failpoint fails).
// Names are listed in docs/ARCHITECTURE.md ("Failpoints").
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace fhirlake::failpoint {

// Reads FHIRLAKE_FAILPOINTS / FHIRLAKE_FAILPOINT_DIR. Called once at start-up (main); tests may call it again
// after changing the environment. Invalid specs are reported as an error Status (the binary refuses to start).
Status Init();

// Evaluates the failpoint `name`: Ok unless it is armed with "error" (or the process dies or pauses here).
Status Hit(std::string_view name);

// True when any failpoint is armed (for code that must do extra work only then).
bool Enabled();

}  // namespace fhirlake::failpoint
