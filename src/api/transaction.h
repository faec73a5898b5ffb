// batch and transaction Bundles (FHIR R4 §3.1.0.11): a transaction is one store transaction (all or
// nothing) with urn:uuid and conditional-reference resolution; a batch runs each entry on its own. Also the
// reference resolution shared with the plain create and update: every resource is parsed and validated before
// the write lock is taken; only one whose references need the store is parsed again under it.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "fhir/resource_parser.h"
#include "store/resource_store.h"

namespace fhirlake::api {

// fullUrl (urn:uuid:..., urn:oid:...) -> "Type/id".
using UrnMap = std::map<std::string, std::string, std::less<>>;

// A conditional criterion "identifier=[system|]value" (the form conditional create and conditional references
// support). `what` names the criterion in errors.
struct IdentifierCondition {
  std::string system;  // empty: any system
  std::string value;
};
Result<IdentifierCondition> ParseIdentifierCondition(std::string_view criterion, std::string_view what);

// Ids of the current resources of `type` matching a conditional criterion.
Result<std::vector<std::string>> FindByCondition(store::StoreTransaction& txn, std::string_view type,
                                                 std::string_view criterion, std::string_view what);

// Before the write lock: rewrites urn:uuid / urn:oid references found in `urns`, checks the form of conditional
// references (`Type?identifier=...`) and notes them, and notes references to a fullUrl in `deferred` (an entry
// whose target its conditional create decides under the lock). A resource with a noted reference is parsed again
// under the lock with a StoreReferenceResolver; its first parse has validated everything else.
class PlanReferenceResolver final : public fhir::ReferenceResolver {
 public:
  PlanReferenceResolver(const UrnMap* urns, const std::set<std::string, std::less<>>* deferred)
      : urns_(urns), deferred_(deferred) {}
  Result<std::optional<std::string>> Resolve(std::string_view reference) override;
  bool needs_store() const { return needs_store_; }

 private:
  const UrnMap* urns_;                                  // may be null
  const std::set<std::string, std::less<>>* deferred_;  // may be null
  bool needs_store_ = false;
};

// Under the write lock: urn references from `urns` (which now holds the conditional creates' targets too), and
// conditional references against the store: exactly one match is rewritten to "Type/id"; none or several fail
// with 412 (kPreconditionFailed), as FHIR asks for conditional references.
class StoreReferenceResolver final : public fhir::ReferenceResolver {
 public:
  StoreReferenceResolver(const UrnMap* urns, store::StoreTransaction* txn) : urns_(urns), txn_(txn) {}
  Result<std::optional<std::string>> Resolve(std::string_view reference) override;

 private:
  const UrnMap* urns_;  // may be null
  store::StoreTransaction* txn_;
};

// Returns the transaction-response / batch-response Bundle. For a transaction, any failing entry fails the
// whole request (nothing is written) with a Status whose message names the entry; an entry that fails to parse
// or validate fails it before the write lock is taken.
Result<std::string> ProcessBundle(store::ResourceStore& store, std::string_view body);

}  // namespace fhirlake::api
