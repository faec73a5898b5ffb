// Who owns an export job, and who may see it (docs/SECURITY.md, "Jobs belong to who started them"): a SigV4
// principal's jobs are visible to the principals of the same AWS account (whose policies then decide each action);
// a SMART client's jobs to that client only (an external issuer's subject: that subject of that issuer only); an
// anonymous job (mode none) to anonymous callers. Anyone else is told the job does not exist, in the same words as for
// an unknown id, so nothing reveals that it does.
#pragma once

#include <algorithm>
#include <string>

#include "bulk/export_request.h"
#include "common/status.h"
#include "common/url.h"
#include "http/router.h"

namespace fhirlake::api {

inline std::string JobOwner(const http::Principal& p) {
  if (p.kind == "sigv4") return "sigv4:" + p.account + ":" + p.id;
  if (p.kind == "smart") return "smart:" + p.id;                // only the same client_id may poll, cancel and download
  if (p.kind == "idp") return "idp:" + p.account + "#" + p.id;  // an issuer's subject (an issuer has no '#')
  return p.id;                                                  // "anonymous"
}

inline bool MaySeeJob(const http::Principal& p, const std::string& owner) {
  if (p.kind == "sigv4") return owner.starts_with("sigv4:" + p.account + ":");
  return owner == JobOwner(p);
}

// A SMART client's export covers only the types its system/ scopes let it read: a _type outside them is refused
// (kForbidden), and without _type the export is narrowed to them (every type when a scope names `*`).
inline Status NarrowExportToScopes(const http::Principal& p, bulk::ExportRequest* r) {
  if (!p.scoped) return Status::Ok();
  if (!p.MayRead("*")) {
    // A _typeFilter's chains and _has reach other types (Observation?patient.gender=...): not past narrow scopes.
    for (const auto& f : r->type_filters) {
      const std::string_view query = std::string_view(f).substr(std::min(f.size(), f.find('?') + 1));
      for (size_t start = 0; start <= query.size();) {
        const size_t amp = query.find('&', start);
        const std::string_view pair = query.substr(start, amp == std::string_view::npos ? amp : amp - start);
        // Decoded as bulk::ParseTypeFilters decodes it, so that the check sees the parameter the search will.
        const std::string name = PercentDecode(pair.substr(0, pair.find('=')), true);
        if (name.starts_with("_has") || name.find('.') != std::string::npos) {
          return Status::Forbidden(
              "_typeFilter '" + f +
              "' reaches other resource types (a chain or _has); that needs a system/*.read scope");
        }
        if (amp == std::string_view::npos) break;
        start = amp + 1;
      }
    }
  }
  if (!r->associated.empty() && !p.MayRead("Provenance")) {
    return Status::Forbidden(
        "includeAssociatedData exports Provenance, which the access token's scopes do not allow reading; ask for a "
        "system/Provenance.read (or .rs) scope");
  }
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
