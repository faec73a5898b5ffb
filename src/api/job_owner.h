// Who owns an export job, and who may see it (docs/SECURITY.md, "Jobs belong to who started them"): a SigV4
// principal's jobs are visible to the principals of the same AWS account (whose policies then decide each action);
// a SMART client's jobs to that client only; an anonymous job (mode none) to anonymous callers. Anyone else is told the
// job does not exist, in the same words as for an unknown id, so nothing reveals that it does.
#pragma once

#include <algorithm>
#include <string>

#include "bulk/export_request.h"
#include "common/status.h"
#include "http/router.h"

namespace fhirlake::api {

inline std::string JobOwner(const http::Principal& p) {
  if (p.kind == "sigv4") return "sigv4:" + p.account + ":" + p.id;
  if (p.kind == "smart") return "smart:" + p.id;  // only the same client_id may poll, cancel and download
  return p.id;                                    // "anonymous"
}

inline bool MaySeeJob(const http::Principal& p, const std::string& owner) {
  if (p.kind == "sigv4") return owner.starts_with("sigv4:" + p.account + ":");
  return owner == JobOwner(p);
}

// A SMART client's export covers only the types its system/ scopes let it read: a _type outside them is refused
// (kForbidden), and without _type the export is narrowed to them (every type when a scope names `*`).
inline Status NarrowExportToScopes(const http::Principal& p, bulk::ExportRequest* r) {
  if (!p.scoped) return Status::Ok();
  for (const auto& t : r->types) {
    if (!p.MayRead(t)) {
      return Status::Forbidden("The access token's scopes do not allow reading " + t +
                               ", which _type names; ask for a system/" + t + ".read (or .rs) scope");
    }
  }
  if (!r->types.empty() || p.MayRead("*")) return Status::Ok();
  for (const auto& t : p.readable_types) {
    if (r->level != bulk::ExportLevel::kSystem && !bulk::IsPatientLevelType(t)) continue;
    if (std::find(r->types.begin(), r->types.end(), t) == r->types.end()) r->types.push_back(t);
  }
  if (r->types.empty()) {
    return Status::Forbidden("The access token's scopes allow reading no type this export contains");
  }
  return Status::Ok();
}

}  // namespace fhirlake::api
