// Who owns an export job, and who may see it (docs/SECURITY.md, "Jobs belong to who started them"): a SigV4
// principal's jobs are visible to the principals of the same AWS account (whose policies then decide each action);
// an anonymous job (mode none) to anonymous callers. Anyone else is told the job does not exist, in the same words
// as for an unknown id, so nothing reveals that it does.
#pragma once

#include <string>

#include "http/router.h"

namespace fhirlake::api {

inline std::string JobOwner(const http::Principal& p) {
  if (p.kind == "sigv4") return "sigv4:" + p.account + ":" + p.id;
  return p.id;  // "anonymous"
}

inline bool MaySeeJob(const http::Principal& p, const std::string& owner) {
  if (p.kind == "sigv4") return owner.starts_with("sigv4:" + p.account + ":");
  return owner == JobOwner(p);
}

}  // namespace fhirlake::api
